"""Middleware and lifecycle events.

A :class:`Middleware` wraps enqueue and execution in ``call_next`` style. Hooks and
middleware are isolated: one that raises is logged and never changes a task's outcome.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .message import Envelope

if TYPE_CHECKING:
    from .context import TaskContext

__all__ = ["HOOK_KINDS", "EnqueueNext", "ExecuteNext", "Middleware", "TaskEvent"]

log = logging.getLogger("taskflow.middleware")

HOOK_KINDS = frozenset({"queued", "start", "success", "failure", "retry", "cancel", "finish"})


@dataclass(frozen=True, slots=True)
class TaskEvent:
    """Something that happened to a task. ``timestamp`` is epoch seconds; ``duration`` is
    the attempt's run time in seconds (None before it ran)."""

    kind: str
    task_id: str
    task_name: str
    queue: str
    status: str
    attempt: int
    result: Any = None
    error: dict[str, str] | None = None
    timestamp: float = 0.0
    duration: float | None = None


EnqueueNext = Callable[[Envelope], Envelope]
ExecuteNext = Callable[["TaskContext"], Awaitable[Any]]


class Middleware:
    """Base class; override either method. Both default to passing straight through."""

    def enqueue(self, envelope: Envelope, call_next: EnqueueNext) -> Envelope:
        """Wraps enqueue (producer side, no I/O): may return a changed envelope."""
        return call_next(envelope)

    async def execute(self, ctx: TaskContext, call_next: ExecuteNext) -> Any:
        """Wraps one execution attempt in the worker; returns the task's value."""
        return await call_next(ctx)


async def run_hooks(kind: str, hooks: list[Callable[[TaskEvent], Any]], event: TaskEvent) -> None:
    """Call each hook with ``event`` (awaiting coroutine hooks); one that raises is logged."""
    for hook in hooks:
        try:
            out = hook(event)
            if inspect.isawaitable(out):
                await out
        except Exception:
            log.exception(
                "%s hook %r failed for task %s[%s]; ignored",
                kind,
                getattr(hook, "__qualname__", hook),
                event.task_name,
                event.task_id,
            )


def chain_enqueue(middlewares: list[Middleware], last: EnqueueNext) -> EnqueueNext:
    """Compose enqueue middleware; one that raises is skipped, not fatal."""
    call = last
    for mw in reversed(middlewares):
        if type(mw).enqueue is Middleware.enqueue:
            continue
        call = _isolated_enqueue(mw, call)
    return call


def _isolated_enqueue(mw: Middleware, call_next: EnqueueNext) -> EnqueueNext:
    def step(env: Envelope) -> Envelope:
        called: list[Envelope] = []

        def nxt(e: Envelope) -> Envelope:
            out = call_next(e)
            called.append(out)
            return out

        try:
            return mw.enqueue(env, nxt)
        except Exception:
            log.exception("middleware %s failed in enqueue; ignored", type(mw).__name__)
            return called[0] if called else call_next(env)

    return step


def chain_execute(middlewares: list[Middleware], last: ExecuteNext) -> ExecuteNext:
    """Compose execute middleware with failures isolated from the task's outcome."""
    call = last
    for mw in reversed(middlewares):
        if type(mw).execute is Middleware.execute:
            continue
        call = _isolated_execute(mw, call)
    return call


class _Outcome:
    __slots__ = ("done", "error", "value")

    def __init__(self) -> None:
        self.done = False
        self.value: Any = None
        self.error: BaseException | None = None


def _isolated_execute(mw: Middleware, call_next: ExecuteNext) -> ExecuteNext:
    async def step(ctx: TaskContext) -> Any:
        outcome = _Outcome()

        async def nxt(c: TaskContext) -> Any:
            try:
                outcome.value = await call_next(c)
            except BaseException as exc:
                outcome.error = exc
                raise
            finally:
                outcome.done = True
            return outcome.value

        try:
            return await mw.execute(ctx, nxt)
        except Exception as exc:
            if outcome.done and exc is outcome.error:
                raise  # the task's own failure, passed through
            log.exception("middleware %s failed in execute; ignored", type(mw).__name__)
            if not outcome.done:
                return await call_next(ctx)
            if outcome.error is not None:
                raise outcome.error from None
            return outcome.value

    return step
