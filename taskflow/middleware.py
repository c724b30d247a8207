"""Middleware: wrappers around enqueue and execution, in ``call_next`` style.

A :class:`MiddlewareStack` holds an app's middleware and builds both chains from that one
list: the enqueue chain is rebuilt whenever the list changes, and an engine builds its
execute chain from the stack. A middleware that raises is logged and never changes a task's
outcome.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any, overload

from .context import TaskContext
from .errors import USER_CODE_ERRORS
from .message import Envelope

__all__ = ["EnqueueNext", "ExecuteNext", "Middleware", "MiddlewareStack"]

log = logging.getLogger("taskflow.middleware")

EnqueueNext = Callable[[Envelope], Envelope]
ExecuteNext = Callable[[TaskContext], Awaitable[Any]]


class Middleware:
    """Base class; override either method. Both default to passing straight through."""

    def enqueue(self, envelope: Envelope, call_next: EnqueueNext) -> Envelope:
        """Wraps enqueue (producer side, no I/O): may return a changed envelope."""
        return call_next(envelope)

    async def execute(self, ctx: TaskContext, call_next: ExecuteNext) -> Any:
        """Wraps one execution attempt in the worker; returns the task's value."""
        return await call_next(ctx)


def _identity(env: Envelope) -> Envelope:
    return env


class MiddlewareStack(Sequence[Middleware]):
    """An app's middleware, outermost first; both chains are built from this one list."""

    def __init__(self) -> None:
        self._items: list[Middleware] = []
        self.enqueue: EnqueueNext = _identity
        """The enqueue chain (the identity while no middleware wraps enqueue)."""

    def add(self, middleware: Middleware) -> None:
        """Add ``middleware`` innermost of those added so far."""
        if isinstance(middleware, type) and issubclass(middleware, Middleware):
            name = middleware.__qualname__
            raise TypeError(f"middleware must be an instance: add_middleware({name}()), not {name}")
        if not isinstance(middleware, Middleware):
            raise TypeError("middleware must be a taskflow.middleware.Middleware")
        if inspect.iscoroutinefunction(type(middleware).enqueue):
            # Its coroutine would be taken for the envelope, and the send fail on it.
            raise TypeError(
                f"{type(middleware).__qualname__}.enqueue must be a plain function: it "
                "runs in the sender's call and returns the envelope (no I/O); only "
                "execute may be async def"
            )
        self._items.append(middleware)
        self.enqueue = _chain_enqueue(self._items, _identity)

    def wrap_execute(self, last: ExecuteNext) -> ExecuteNext:
        """The execute chain around ``last`` (a worker's call of the task's function)."""
        return _chain_execute(self._items, last)

    @overload
    def __getitem__(self, index: int) -> Middleware: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[Middleware]: ...

    def __getitem__(self, index: int | slice) -> Middleware | Sequence[Middleware]:
        return self._items[index]

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[Middleware]:
        return iter(self._items)


def _chain_enqueue(middlewares: list[Middleware], last: EnqueueNext) -> EnqueueNext:
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
            out = mw.enqueue(env, nxt)
        except Exception:
            log.exception("middleware %s failed in enqueue; ignored", type(mw).__name__)
            return called[0] if called else call_next(env)
        if isinstance(out, Envelope):
            return out
        # A missing ``return call_next(envelope)``: the send failed on None's ``queue``.
        log.error(
            "middleware %s: enqueue returned %s, not the envelope (return "
            "call_next(envelope)); ignored",
            type(mw).__name__,
            type(out).__name__,
        )
        return called[0] if called else call_next(env)

    return step


def _chain_execute(middlewares: list[Middleware], last: ExecuteNext) -> ExecuteNext:
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
        except USER_CODE_ERRORS as exc:  # sys.exit() in it too
            if outcome.done and exc is outcome.error:
                raise  # the task's own failure, passed through
            log.exception("middleware %s failed in execute; ignored", type(mw).__name__)
            if not outcome.done:
                return await call_next(ctx)
            if outcome.error is not None:
                raise outcome.error from None
            return outcome.value

    return step
