"""``Task[P, R]``: a registered function with typed ``delay``; ``with_options``; signatures."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypedDict, TypeVar, Unpack

from .options import TaskOptions
from .payload import PayloadSchema, build_schema

if TYPE_CHECKING:
    from .app import App
    from .results.handle import AsyncResult

__all__ = ["CallOptions", "Signature", "Task", "TaskSender"]

P = ParamSpec("P")
R = TypeVar("R")

CALL_OPTIONS = frozenset(
    {
        "queue",
        "priority",
        "countdown",
        "eta",
        "expires",
        "task_id",
        "idempotency_key",
        "retries",
        "timeout",
        "headers",
    }
)


class CallOptions(TypedDict, total=False):
    """The per-call options of ``apply_async``, as ``Task.with_options`` takes them."""

    queue: str
    priority: int
    countdown: float
    eta: datetime
    expires: float | datetime
    task_id: str
    idempotency_key: str
    retries: int
    timeout: float
    headers: dict[str, str]


class Task(Generic[P, R]):
    """A task: call it to run inline, ``delay()`` it to run on a worker."""

    def __init__(self, app: App, fn: Callable[..., Any], name: str, options: TaskOptions) -> None:
        self.app = app
        self.fn = fn
        self.name = name
        self.options = options
        self.is_async = inspect.iscoroutinefunction(fn)
        self.schema: PayloadSchema = build_schema(fn, name, skip_first=options.bind)
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
            from .context import TaskContext

            ctx = TaskContext(id="inline", name=self.name, queue=self.queue)
            return self.fn(ctx, *args, **kwargs)  # type: ignore[no-any-return]
        return self.fn(*args, **kwargs)  # type: ignore[no-any-return]

    @property
    def queue(self) -> str:
        """The queue this task is sent to by default."""
        return self.options.queue or self.app.default_queue

    def delay(self, *args: P.args, **kwargs: P.kwargs) -> AsyncResult[R]:
        """Enqueue with default options."""
        return self.app._send(self, args, kwargs, {})

    def with_options(self, **options: Unpack[CallOptions]) -> TaskSender[P, R]:
        """This task with per-call options, sent by the returned sender's ``delay``.

        ``add.with_options(priority=9).delay(2, 3)`` is ``add.apply_async((2, 3),
        priority=9)`` with the arguments checked by the type checker like ``add.delay``'s
        (``apply_async`` takes them as a plain tuple and dict, which it cannot check).
        """
        return TaskSender(self, _collect(self.name, _unknown(options), **options))

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
        **unknown: Any,
    ) -> AsyncResult[R]:
        """Enqueue with per-call options (they win over the task's and the app's)."""
        opts = _collect(
            self.name,
            unknown,
            queue=queue,
            priority=priority,
            countdown=countdown,
            eta=eta,
            expires=expires,
            task_id=task_id,
            idempotency_key=idempotency_key,
            retries=retries,
            timeout=timeout,
            headers=headers,
        )
        return self.app._send(self, tuple(args or ()), dict(kwargs or {}), opts)

    async def adelay(self, *args: P.args, **kwargs: P.kwargs) -> AsyncResult[R]:
        """``delay`` for async producers."""
        return await self.app._asend(self, args, kwargs, {})

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
        **unknown: Any,
    ) -> AsyncResult[R]:
        """``apply_async`` for async producers."""
        opts = _collect(
            self.name,
            unknown,
            queue=queue,
            priority=priority,
            countdown=countdown,
            eta=eta,
            expires=expires,
            task_id=task_id,
            idempotency_key=idempotency_key,
            retries=retries,
            timeout=timeout,
            headers=headers,
        )
        return await self.app._asend(self, tuple(args or ()), dict(kwargs or {}), opts)

    def s(self, *args: Any, **kwargs: Any) -> Signature:
        """A signature: this task with these arguments, to send later or compose."""
        return Signature(self.app, self.name, args, kwargs)

    def si(self, *args: Any, **kwargs: Any) -> Signature:
        """An immutable signature: in a chain it ignores the parent's result."""
        return Signature(self.app, self.name, args, kwargs, immutable=True)


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
        return self.task.app._send(self.task, args, kwargs, dict(self.options))

    async def adelay(self, *args: P.args, **kwargs: P.kwargs) -> AsyncResult[R]:
        """``delay`` for async producers."""
        return await self.task.app._asend(self.task, args, kwargs, dict(self.options))


def _unknown(options: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in options.items() if k not in CALL_OPTIONS}


def _collect(task: str, unknown: Mapping[str, Any], **given: Any) -> dict[str, Any]:
    if unknown:
        raise ValueError(f"{task}: unknown option(s): {', '.join(sorted(unknown))}")
    return {k: v for k, v in given.items() if v is not None}


class Signature:
    """A task name with arguments and call options: data, safe to pass around."""

    __slots__ = ("app", "args", "immutable", "kwargs", "name", "options")

    def __init__(
        self,
        app: App,
        name: str,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
        options: dict[str, Any] | None = None,
        *,
        immutable: bool = False,
    ) -> None:
        self.app = app
        self.name = name
        self.args = tuple(args)
        self.kwargs = dict(kwargs or {})
        self.options = dict(options or {})
        self.immutable = immutable

    def set(self, **options: Any) -> Signature:
        """A copy with call options (queue, priority, countdown, ...) added."""
        unknown = set(options) - CALL_OPTIONS
        if unknown:
            raise ValueError(f"{self.name}: unknown option(s): {', '.join(sorted(unknown))}")
        return Signature(
            self.app,
            self.name,
            self.args,
            self.kwargs,
            {**self.options, **options},
            immutable=self.immutable,
        )

    def clone(self, args: tuple[Any, ...] = ()) -> Signature:
        """A copy with ``args`` prepended (unless immutable)."""
        new_args = self.args if self.immutable else (*args, *self.args)
        return Signature(
            self.app, self.name, new_args, self.kwargs, self.options, immutable=self.immutable
        )

    def apply_async(self, **options: Any) -> AsyncResult[Any]:
        """Send it."""
        sig = self.set(**options) if options else self
        return self.app.enqueue_many([sig])[0]

    def delay(self, *args: Any, **kwargs: Any) -> AsyncResult[Any]:
        """Send it with extra arguments."""
        sig = Signature(
            self.app,
            self.name,
            (*self.args, *args),
            {**self.kwargs, **kwargs},
            self.options,
            immutable=self.immutable,
        )
        return sig.apply_async()

    def __or__(self, other: Any) -> Any:
        """``a.s() | b.s()``: a chain (``taskflow.canvas.chain``)."""
        # The canvas engine sits above tasks, so it is imported when first used.
        from .canvas import Canvas, chain

        if not isinstance(other, Signature | Canvas):
            return NotImplemented
        return chain(self, other)

    def __repr__(self) -> str:
        parts = [repr(a) for a in self.args] + [f"{k}={v!r}" for k, v in self.kwargs.items()]
        return f"{self.name}.{'si' if self.immutable else 's'}({', '.join(parts)})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Signature):
            return NotImplemented
        return (self.name, self.args, self.kwargs, self.options, self.immutable) == (
            other.name,
            other.args,
            other.kwargs,
            other.options,
            other.immutable,
        )

    __hash__ = None  # type: ignore[assignment]
