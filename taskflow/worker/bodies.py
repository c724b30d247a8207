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
import contextlib
import ctypes
import threading
from collections.abc import Callable
from typing import Any

from ..context import TaskContext, reset_current, set_current
from ..errors import TaskTimeout

__all__ = ["Completions", "Interrupted", "run_async", "run_sync"]

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
    __slots__ = ("done", "ident", "interrupted", "lock")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.ident: int | None = None
        self.done = False
        self.interrupted = False

    def interrupt(self, exc: type[BaseException]) -> None:
        with self.lock:
            if self.ident is not None and not self.done:
                self.interrupted = True
                ctypes.pythonapi.PyThreadState_SetAsyncExc(
                    ctypes.c_ulong(self.ident), ctypes.py_object(exc)
                )

    def finish(self) -> None:
        with self.lock:
            self.done = True
            if self.interrupted and self.ident is not None:
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


class Completions:
    """Hands the outcomes of sync bodies back to the event loop, in batches.

    A body that returns while the loop has not yet taken the previous outcomes adds its
    own to theirs: one wake-up of the loop (one write to its self-pipe) for every outcome
    that finished meanwhile, instead of one each as ``asyncio.wrap_future`` does.
    """

    __slots__ = ("_lock", "_loop", "_ready", "_scheduled")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._lock = threading.Lock()
        self._ready: list[tuple[asyncio.Future[Any], concurrent.futures.Future[Any]]] = []
        self._scheduled = False

    def watch(self, cfut: concurrent.futures.Future[Any]) -> asyncio.Future[Any]:
        """A future of the loop that gets ``cfut``'s outcome."""
        fut: asyncio.Future[Any] = self._loop.create_future()
        cfut.add_done_callback(lambda done: self._post(fut, done))
        return fut

    def _post(self, fut: asyncio.Future[Any], cfut: concurrent.futures.Future[Any]) -> None:
        # Runs in the thread that completed cfut (or on the loop, for a cancelled one).
        with self._lock:
            self._ready.append((fut, cfut))
            if self._scheduled:
                return
            self._scheduled = True
        # A closed loop raises RuntimeError: nobody awaits the outcome any more.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._deliver)

    def _deliver(self) -> None:
        with self._lock:
            ready, self._ready = self._ready, []
            self._scheduled = False
        for fut, cfut in ready:
            if fut.done():  # the awaiting task was cancelled
                continue
            if cfut.cancelled():
                fut.cancel()
                continue
            exc = cfut.exception()
            if exc is None:
                fut.set_result(cfut.result())
            else:
                fut.set_exception(exc)


async def run_sync(
    pool: concurrent.futures.Executor,
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    ctx: TaskContext,
    *,
    completions: Completions,
    on_submit: Callable[[concurrent.futures.Future[Any]], None] | None = None,
) -> Any:
    """Run ``fn`` in ``pool``; cancelling the awaiting task interrupts the thread.

    The deadline is the caller's (the worker's watchdog cancels at it, after setting
    ``ctx.cancelled`` with reason ``"timeout"``, so the thread gets :class:`TaskTimeout`).
    ``on_submit`` receives the future of the thread's run, which tells whether the body
    still runs after the cancellation was reported. ``completions`` (one per loop) hands
    the outcome back.
    """
    thread = _Thread()
    cfut = pool.submit(_in_thread, thread, fn, args, kwargs, ctx)
    if on_submit is not None:
        on_submit(cfut)
    try:
        return await completions.watch(cfut)
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
