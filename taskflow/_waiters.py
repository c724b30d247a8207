"""Cross-thread wake-ups for in-process backends (memory broker and result store), and
the limits of a caller's waits.

A waiter is registered while the caller still holds its data lock, so a notification that
happens between "checked, nothing there" and "started waiting" is never lost.
"""

from __future__ import annotations

import asyncio
import math
import threading
from collections.abc import Awaitable
from numbers import Real
from typing import Any, TypeVar

__all__ = ["Waiters", "by_deadline", "wait_future", "wait_limit", "within"]

T = TypeVar("T")


def wait_limit(timeout: object, what: str = "timeout") -> float | None:
    """A caller's ``timeout`` for a wait, in seconds: None (no limit) for None, for
    infinity and for any span past what a thread can wait (``threading.TIMEOUT_MAX``,
    about 292 years; a longer one raised ``OverflowError``); 0 for a negative one.
    ``ValueError`` for NaN or a value that is not a number."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, Real) or math.isnan(timeout):
        raise ValueError(f"{what} must be None or a number of seconds, got {timeout!r}")
    seconds = float(timeout)
    if seconds >= threading.TIMEOUT_MAX:
        return None
    return max(0.0, seconds)


def _wake(fut: asyncio.Future[Any]) -> None:
    if not fut.done():
        fut.set_result(None)


class Waiters:
    """A set of one-shot waiters (asyncio futures on any loop, or threading events)."""

    __slots__ = ("_events", "_futures", "_lock")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._futures: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        self._events: list[threading.Event] = []

    def register_async(self) -> asyncio.Future[None]:
        """A future resolved by the next :meth:`notify_all` (call with the data lock held)."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        with self._lock:
            self._futures.append((loop, fut))
        return fut

    def register_thread(self) -> threading.Event:
        """A threading event set by the next :meth:`notify_all`."""
        event = threading.Event()
        with self._lock:
            self._events.append(event)
        return event

    def __len__(self) -> int:
        """How many waiters are registered."""
        return len(self._futures) + len(self._events)

    def discard(self, waiter: asyncio.Future[None] | threading.Event) -> None:
        """Forget a waiter that timed out."""
        with self._lock:
            if isinstance(waiter, threading.Event):
                if waiter in self._events:
                    self._events.remove(waiter)
            else:
                self._futures = [(lp, f) for lp, f in self._futures if f is not waiter]

    def notify_all(self) -> None:
        """Wake every registered waiter, from any thread."""
        if not self._futures and not self._events:
            return
        with self._lock:
            futures, self._futures = self._futures, []
            events, self._events = self._events, []
        # The private getter returns None outside a loop where the public one raises, and
        # this runs on every wake-up, from loop and non-loop threads alike.
        running = asyncio._get_running_loop()  # noqa: SLF001
        for loop, fut in futures:
            if loop is running:
                _wake(fut)
            elif not loop.is_closed():
                loop.call_soon_threadsafe(_wake, fut)
        for event in events:
            event.set()


async def wait_future(fut: asyncio.Future[None], timeout: float | None) -> bool:
    """Wait for ``fut`` up to ``timeout`` seconds; True if it fired.

    A wait that times out leaves ``fut`` pending (still registered): the caller may wait
    on it again, and a notification that comes later still wakes that wait."""
    if fut.done():
        return not fut.cancelled()
    # asyncio.timeout, not wait_for: on 3.11 wait_for swallows a cancellation that arrives
    # just as ``fut`` resolves, and the cancelled caller (a worker's fetch) runs on forever.
    # The shield keeps the timeout from cancelling ``fut`` itself: a cancelled one would
    # read as fired to the next wait, which then returns at once (a busy loop).
    try:
        async with asyncio.timeout(timeout):
            await asyncio.shield(fut)
    except TimeoutError:
        return False
    return True


async def within(awaitable: Awaitable[T], timeout: float | None) -> T:
    """Await with a deadline (``TimeoutError`` when it passes).

    Use this, not ``asyncio.wait_for``: on 3.11 ``wait_for`` can swallow a cancellation
    that arrives as the awaited thing completes, and a cancelled worker then runs on.
    """
    async with asyncio.timeout(timeout):
        return await awaitable


async def by_deadline(awaitable: Awaitable[T], timeout: float | None) -> T | None:
    """Await with a deadline that is an answer, not an error: None once ``timeout``
    seconds passed, whatever the awaited code was waiting for (a server that stopped
    answering, say). A ``TimeoutError`` the awaited code raises itself is raised as is."""
    if timeout is None:
        return await awaitable
    bound = asyncio.timeout(timeout)
    try:
        async with bound:
            return await awaitable
    except TimeoutError:
        if bound.expired():
            return None
        raise
