"""``Task[P, R]``: a registered function with typed ``delay``; ``with_options``; ``s()``.

A :class:`Task` is the kernel's :class:`~taskflow.kernel.TaskDef` (what the worker runs)
with the sending API on top, bound to the app's kernel. Being one object, what the user
holds and what the registry hands the worker are the same: ``app.registry.get(name)`` is
the decorated task.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from types import MappingProxyType
from typing import Any, Generic, ParamSpec, TypeVar, Unpack

from .canvas.signature import Signature, attach_callbacks
from .context import TaskContext
from .kernel import CALL_OPTIONS, CallOptions, Kernel, TaskDef, check_call_values, prepare
from .options import TaskOptions, call_arguments
from .results.handle import AsyncResult

__all__ = ["CALL_OPTIONS", "CallOptions", "Signature", "Task", "TaskSender", "register"]

P = ParamSpec("P")
R = TypeVar("R")

_NO_OPTIONS: Mapping[str, Any] = MappingProxyType({})


def register(
    kernel: Kernel, fn: Callable[..., Any], name: str | None, options: dict[str, Any]
) -> Task[Any, Any]:
    """Make ``fn`` a task of ``kernel``'s app (``@app.task``, ``@app.periodic``)."""
    if not callable(fn):
        raise TypeError(f"@app.task needs a function, got {fn!r}")
    task_name = f"{fn.__module__}.{fn.__qualname__}" if name is None else name
    if not isinstance(task_name, str) or not task_name or not task_name.isprintable():
        raise ValueError(
            f"task name must be a non-empty string of printable characters, got {task_name!r}"
        )
    task: Task[Any, Any] = Task(kernel, fn, task_name, TaskOptions.build(task_name, options))
    kernel.registry.add(task)
    return task


class Task(TaskDef, Generic[P, R]):
    """A task: call it to run inline, ``delay()`` it to run on a worker."""

    def __init__(
        self, kernel: Kernel, fn: Callable[..., Any], name: str, options: TaskOptions
    ) -> None:
        super().__init__(fn, name, options)
        self.kernel = kernel
        self.__doc__ = fn.__doc__
        self.__name__ = getattr(fn, "__name__", name)
        self.__qualname__ = getattr(fn, "__qualname__", name)
        self.__module__ = getattr(fn, "__module__", "")
        self.__wrapped__ = fn

    def __repr__(self) -> str:
        return f"<Task {self.name}>"

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run the function inline, in this process (``bind=True`` gets a local context)."""
        if self.options.bind:
            ctx = TaskContext(id="inline", name=self.name, queue=self.queue)
            return self.fn(ctx, *args, **kwargs)  # type: ignore[no-any-return]
        return self.fn(*args, **kwargs)  # type: ignore[no-any-return]

    @property
    def queue(self) -> str:
        """The queue this task is sent to by default."""
        return self.options.queue or self.kernel.settings.default_queue

    def delay(self, *args: P.args, **kwargs: P.kwargs) -> AsyncResult[R]:
        """Enqueue with default options."""
        return send(self, args, kwargs, _NO_OPTIONS)

    def with_options(self, **options: Unpack[CallOptions]) -> TaskSender[P, R]:
        """This task with per-call options, sent by the returned sender's ``delay``.

        ``add.with_options(priority=9).delay(2, 3)`` is ``add.apply_async((2, 3),
        priority=9)`` with the arguments checked by the type checker like ``add.delay``'s
        (``apply_async`` takes them as a plain tuple and dict, which it cannot check).
        """
        unknown = {k: v for k, v in options.items() if k not in CALL_OPTIONS}
        given = _given(self.name, unknown, options)
        check_call_values(self.name, given, self.kernel.clock.time())  # where it is written
        return TaskSender(self, given)

    # apply_async and aapply_async spell the CallOptions out as keywords (API.md shows them
    # with None defaults); they read them back through CALL_OPTIONS, derived from the
    # TypedDict, and a test checks that these keywords are exactly CALL_OPTIONS.
    def apply_async(
        self,
        args: tuple[Any, ...] | list[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        *,
        queue: str | None = None,
        priority: int | None = None,
        countdown: float | None = None,
        eta: datetime | None = None,
        expires: float | datetime | None = None,
        task_id: str | None = None,
        idempotency_key: str | None = None,
        retries: int | None = None,
        timeout: float | None = None,
        headers: dict[str, str] | None = None,
        link: Signature | list[Signature] | None = None,
        link_error: Signature | list[Signature] | None = None,
        **unknown: Any,
    ) -> AsyncResult[R]:
        """Enqueue with per-call options (they win over the task's and the app's).

        ``link``: signatures sent with this task's result as first argument once it
        succeeded; ``link_error``: sent with its id once it failed for good.
        """
        opts = _given(self.name, unknown, locals())
        return send(self, *call_arguments(args, kwargs, self.name), opts)

    async def adelay(self, *args: P.args, **kwargs: P.kwargs) -> AsyncResult[R]:
        """``delay`` for async producers."""
        return await asend(self, args, kwargs, _NO_OPTIONS)

    async def aapply_async(
        self,
        args: tuple[Any, ...] | list[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        *,
        queue: str | None = None,
        priority: int | None = None,
        countdown: float | None = None,
        eta: datetime | None = None,
        expires: float | datetime | None = None,
        task_id: str | None = None,
        idempotency_key: str | None = None,
        retries: int | None = None,
        timeout: float | None = None,
        headers: dict[str, str] | None = None,
        link: Signature | list[Signature] | None = None,
        link_error: Signature | list[Signature] | None = None,
        **unknown: Any,
    ) -> AsyncResult[R]:
        """``apply_async`` for async producers."""
        opts = _given(self.name, unknown, locals())
        return await asend(self, *call_arguments(args, kwargs, self.name), opts)

    def s(self, *args: Any, **kwargs: Any) -> Signature:
        """A signature: this task with these arguments, to send later or compose."""
        return Signature(self.kernel, self.name, args, kwargs)

    def si(self, *args: Any, **kwargs: Any) -> Signature:
        """An immutable signature: in a chain it ignores the parent's result."""
        return Signature(self.kernel, self.name, args, kwargs, immutable=True)


class TaskSender(Generic[P, R]):
    """A task bound to per-call options (``Task.with_options``); reusable for many sends."""

    __slots__ = ("options", "task")

    def __init__(self, task: Task[P, R], options: dict[str, Any]) -> None:
        self.task = task
        self.options = options

    def __repr__(self) -> str:
        # Header values may carry credentials (auth tokens, tenant keys): names only.
        shown = [f"{k}={v!r}" for k, v in self.options.items() if k != "headers"]
        if "headers" in self.options:
            shown.append(f"headers=[{', '.join(sorted(self.options['headers']))}]")
        return f"<TaskSender {self.task.name}({', '.join(shown)})>"

    def delay(self, *args: P.args, **kwargs: P.kwargs) -> AsyncResult[R]:
        """Enqueue with this sender's options."""
        return send(self.task, args, kwargs, self.options)

    async def adelay(self, *args: P.args, **kwargs: P.kwargs) -> AsyncResult[R]:
        """``delay`` for async producers."""
        return await asend(self.task, args, kwargs, self.options)


def send(
    task: Task[Any, R], args: Sequence[Any], kwargs: Mapping[str, Any], opts: Mapping[str, Any]
) -> AsyncResult[R]:
    """Send one call of ``task`` from synchronous code (not from the app's loop)."""
    kernel = task.kernel
    if "link" in opts or "link_error" in opts:
        opts = attach_callbacks(kernel, task.name, opts)
    prepared = prepare(kernel.settings, task.name, task, args, kwargs, opts=opts)
    enqueuer = kernel.enqueuer
    ids = enqueuer.run_blocking(enqueuer.plan([prepared]))
    return AsyncResult(kernel, ids[0], task.name)


async def asend(
    task: Task[Any, R], args: Sequence[Any], kwargs: Mapping[str, Any], opts: Mapping[str, Any]
) -> AsyncResult[R]:
    """Send one call of ``task`` from async code (any loop)."""
    kernel = task.kernel
    if "link" in opts or "link_error" in opts:
        opts = attach_callbacks(kernel, task.name, opts)
    prepared = prepare(kernel.settings, task.name, task, args, kwargs, opts=opts)
    enqueuer = kernel.enqueuer
    ids = await kernel.acall(enqueuer.run(enqueuer.plan([prepared])))
    return AsyncResult(kernel, ids[0], task.name)


def _given(task: str, unknown: Mapping[str, Any], given: Mapping[str, Any]) -> dict[str, Any]:
    """The call options in ``given`` that are set (not None); unknown ones raise."""
    if unknown:
        raise ValueError(f"{task}: unknown option(s): {', '.join(sorted(unknown))}")
    return {k: v for k, v in given.items() if k in CALL_OPTIONS and v is not None}
