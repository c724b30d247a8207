"""Running one task body: coroutines on the loop, sync functions on a thread pool.

Deadlines: a coroutine is cancelled at its deadline; a sync function sees
``ctx.cancelled`` set and gets :class:`~taskflow.errors.TaskTimeout` raised inside its
thread (an asynchronous exception: it lands at the next Python bytecode, so a call blocked
in C returns first). A cancelled or stopped sync function gets :class:`Interrupted` the
same way.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ctypes
import threading
from collections.abc import Callable
from typing import Any

from ..context import TaskContext, reset_current, set_current
from ..errors import TaskTimeout

__all__ = ["Interrupted", "run_async", "run_sync"]

# How long a sync task gets to unwind after it was interrupted before the worker reports
# the outcome anyway (the slot stays busy until the thread really returns).
UNWIND_GRACE = 2.0
# The same when the worker stops: stop_now() must return within a few seconds; a body that
# is still running then is adopted (see Executor.adopt), not waited for.
STOP_UNWIND_GRACE = 0.5


class Interrupted(BaseException):
    """Raised inside a sync task's thread when the task is cancelled or its worker stops.

    A ``BaseException`` (like ``KeyboardInterrupt``), so that ``except Exception`` in task
    code does not swallow it; ``finally`` blocks and context managers still run.
    """


class _Thread:
    __slots__ = ("done", "ident", "lock")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.ident: int | None = None
        self.done = False

    def interrupt(self, exc: type[BaseException]) -> None:
        with self.lock:
            if self.ident is not None and not self.done:
                ctypes.pythonapi.PyThreadState_SetAsyncExc(
                    ctypes.c_ulong(self.ident), ctypes.py_object(exc)
                )

    def finish(self) -> None:
        with self.lock:
            self.done = True
            if self.ident is not None:
                # Clear an interrupt that arrived too late to land inside the task.
                ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(self.ident), None)


def _in_thread(
    thread: _Thread,
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    ctx: TaskContext,
) -> Any:
    thread.ident = threading.get_ident()
    token = set_current(ctx)
    try:
        return fn(*args, **kwargs)
    finally:
        try:
            thread.finish()
        finally:
            reset_current(token)


async def run_sync(
    pool: concurrent.futures.Executor,
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    ctx: TaskContext,
    *,
    on_submit: Callable[[concurrent.futures.Future[Any]], None] | None = None,
) -> Any:
    """Run ``fn`` in ``pool``; cancelling the awaiting task interrupts the thread.

    The deadline is the caller's (the worker's watchdog cancels at it, after setting
    ``ctx.cancelled`` with reason ``"timeout"``, so the thread gets :class:`TaskTimeout`).
    ``on_submit`` receives the future of the thread's run, which tells whether the body
    still runs after the cancellation was reported.
    """
    thread = _Thread()
    cfut = pool.submit(_in_thread, thread, fn, args, kwargs, ctx)
    if on_submit is not None:
        on_submit(cfut)
    try:
        return await asyncio.wrap_future(cfut)
    except asyncio.CancelledError:
        ctx.cancelled.set()
        reason = ctx.cancelled.reason
        thread.interrupt(TaskTimeout if reason == "timeout" else Interrupted)
        await _unwind(cfut, STOP_UNWIND_GRACE if reason == "shutdown" else UNWIND_GRACE)
        raise


async def _unwind(cfut: concurrent.futures.Future[Any], grace: float) -> None:
    if cfut.cancel():
        return
    waiter = asyncio.wrap_future(cfut)
    done, _ = await asyncio.wait({waiter}, timeout=grace)
    if waiter in done and not waiter.cancelled():
        waiter.exception()  # retrieved: the outcome is reported by the caller
    elif not done:
        waiter.cancel()


async def run_async(
    fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], ctx: TaskContext
) -> Any:
    """Await the coroutine function; its deadline is the caller's (the worker's watchdog
    cancels it, after setting ``ctx.cancelled`` with reason ``"timeout"``)."""
    token = set_current(ctx)
    try:
        return await fn(*args, **kwargs)
    except asyncio.CancelledError:
        ctx.cancelled.set()
        raise
    finally:
        reset_current(token)
