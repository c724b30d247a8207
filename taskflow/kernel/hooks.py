"""Lifecycle hooks: the app's, by kind, and each task's own, run isolated from the task.

A hook that raises is logged and never changes a task's outcome nor stops a worker. A
coroutine hook is awaited on the loop; a plain function runs on one of the app's hook
threads (:class:`HookThreads`) while the loop awaits it, so a hook that blocks (an HTTP
call, a ``delay()`` of a follow-up task, a ``get()``) holds up only its own task, never
the loop that renews every running task's lease. The hooks of one event run one after the
other. The app's hooks are kept by kind; a task's own hooks (``on_success=`` and friends)
are resolved once, when its :class:`~.taskdef.TaskDef` is built, so announcing an event is
a lookup, never a search by name.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import inspect
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final, Protocol

from ..errors import USER_CODE_ERRORS, stop_iteration_error
from ..eventbus import HOOK_KINDS, HookKind, TaskEvent
from ..options import check_hook

__all__ = ["HOOK_THREADS", "Hook", "HookThreads", "Hooks", "OwnHooks", "run_hooks"]

log = logging.getLogger("taskflow.middleware")

Hook = Callable[[TaskEvent], Any]

HOOK_THREADS: Final = 16
"""The most threads an app runs plain-function hooks on at once; more wait their turn."""

SATURATED_AFTER: Final = 5.0
"""Seconds a hook may wait for a thread before the wait is logged."""
SATURATED_WARN_EVERY: Final = 60.0
"""Seconds between two warnings that every hook thread is taken."""

_Job = tuple[asyncio.AbstractEventLoop, "asyncio.Future[Any]", contextvars.Context, Hook, TaskEvent]


class HookThreads:
    """Daemon threads for plain-function hooks, started as needed up to ``limit`` and kept.

    Daemon threads, unlike an executor's: a hook stuck in a call that never returns must
    not keep the process from exiting (a worker's second SIGINT ends it at once)."""

    def __init__(self, limit: int = HOOK_THREADS) -> None:
        self._limit = limit
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads = 0
        self._waiting = 0  # threads waiting for a job
        self._queued = 0  # jobs no thread took yet
        self._warned = -SATURATED_WARN_EVERY  # monotonic time of the last warning
        self._checking = False  # a check of the wait is scheduled (on the loop)

    def run(self, hook: Hook, event: TaskEvent) -> asyncio.Future[Any]:
        """On the loop: call ``hook(event)`` on a hook thread, in a copy of the caller's
        context; the future holds what it returned or raised."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        with self._lock:
            self._queued += 1
            short = self._queued > self._waiting
            start = short and self._threads < self._limit
            if start:
                self._threads += 1
        self._jobs.put((loop, future, contextvars.copy_context(), hook, event))
        if start:
            threading.Thread(target=self._serve, name="taskflow-hook", daemon=True).start()
        elif short and not self._checking:
            # Every thread is in a hook: for a moment, or in hooks that block. One check at
            # a time: a timer for each waiting hook cost a busy worker several µs a task.
            self._checking = True
            loop.call_later(SATURATED_AFTER, self._still_saturated, hook, event)
        return future

    def _still_saturated(self, hook: Hook, event: TaskEvent) -> None:
        """On the loop, a while after a hook found every thread taken: if hooks still wait
        and no thread has come free, say so (at most once a minute), since the tasks whose
        hooks wait keep their slots."""
        self._checking = False
        with self._lock:
            saturated = self._queued > 0 and self._waiting == 0
        now = time.monotonic()
        if not saturated or now - self._warned < SATURATED_WARN_EVERY:
            return
        self._warned = now
        log.warning(
            "hooks have waited %gs for a hook thread, all %d of which are in hooks: %d "
            "wait (the %s hook %s of task %s[%s] among them); hooks that block for long, "
            "or never return, hold their tasks' slots",
            SATURATED_AFTER,
            self._limit,
            self._queued,
            event.kind,
            getattr(hook, "__qualname__", type(hook).__qualname__),
            event.task_name,
            event.task_id,
        )

    def close(self) -> None:
        """Let the threads end: a waiting one at once, one in a hook when it returns (a
        hook given after this would wait for ever: :meth:`Hooks.close` starts afresh)."""
        with self._lock:
            count, self._threads = self._threads, 0
        for _ in range(count):
            self._jobs.put(None)

    def _serve(self) -> None:
        while True:
            with self._lock:
                self._waiting += 1
            job = self._jobs.get()
            with self._lock:
                self._waiting -= 1
                if job is not None:
                    self._queued -= 1
            if job is None:
                return
            loop, future, context, hook, event = job
            try:
                outcome: tuple[bool, Any] = (True, context.run(hook, event))
            except StopIteration as exc:  # a future refuses StopIteration itself
                outcome = (False, stop_iteration_error(exc, "the hook"))
            except BaseException as exc:  # handed to the loop, which logs it
                outcome = (False, exc)
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(_settle, future, outcome)
            del job, future, hook, event, outcome


def _settle(future: asyncio.Future[Any], outcome: tuple[bool, Any]) -> None:
    if future.cancelled():
        return
    ok, value = outcome
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)


def _is_coroutine_hook(hook: Hook) -> bool:
    """Whether ``hook`` is a coroutine function (or an object whose ``__call__`` is)."""
    return inspect.iscoroutinefunction(hook) or inspect.iscoroutinefunction(
        getattr(hook, "__call__", None)  # noqa: B004 -- the method itself is asked about
    )


class OwnHooks(Protocol):
    """Anything with hooks of its own by kind: a :class:`~.taskdef.TaskDef`."""

    @property
    def hooks(self) -> Mapping[str, tuple[Hook, ...]]: ...


class Hooks:
    """The app's hooks by kind, and the runner that adds a task's own."""

    def __init__(self) -> None:
        self._by_kind: dict[str, list[Hook]] = {kind: [] for kind in HookKind}
        self.threads = HookThreads()

    @staticmethod
    def check(kind: str) -> None:
        """Raise ValueError unless ``kind`` is a hook kind."""
        if kind not in HOOK_KINDS:
            raise ValueError(f"unknown hook kind {kind!r}; known: {', '.join(sorted(HOOK_KINDS))}")

    def add(self, kind: str, hook: Hook) -> None:
        """Call ``hook`` for every event of ``kind``; raises ValueError for an unknown kind
        or for a hook that cannot be called with one event."""
        self.check(kind)
        check_hook(hook, f"{kind} hook")
        self._by_kind[kind].append(hook)

    def __getitem__(self, kind: str) -> list[Hook]:
        """The app's hooks of ``kind`` (a live list)."""
        return self._by_kind[kind]

    def wants(self, kind: str, task: OwnHooks | None = None) -> bool:
        """Whether an event of ``kind`` (for ``task``) would reach any hook."""
        return bool(self._by_kind[kind]) or (task is not None and kind in task.hooks)

    async def run(self, kind: str, event: TaskEvent, task: OwnHooks | None = None) -> None:
        """Run the app's hooks of ``kind``, then ``task``'s own; never raises."""
        own = task.hooks.get(kind, ()) if task is not None else ()
        await run_hooks(kind, (*self._by_kind[kind], *own), event, self.threads)

    def close(self) -> None:
        """End the hook threads that wait for work (the app is closing); a later hook
        starts new ones."""
        threads, self.threads = self.threads, HookThreads()
        threads.close()


async def run_hooks(
    kind: str, hooks: Iterable[Hook], event: TaskEvent, threads: HookThreads | None = None
) -> None:
    """Call each hook with ``event``, one after the other: a coroutine hook on the loop, a
    plain function on ``threads`` (on the loop without them); one that raises is logged."""
    for hook in hooks:
        try:
            if threads is None or _is_coroutine_hook(hook):
                out = hook(event)
            else:
                out = await threads.run(hook, event)
            if inspect.isawaitable(out):
                await out
        except USER_CODE_ERRORS:  # a sys.exit() too: the worker's loop runs the hooks
            log.exception(
                "%s hook %r failed for task %s[%s]; ignored",
                kind,
                getattr(hook, "__qualname__", hook),
                event.task_name,
                event.task_id,
            )
