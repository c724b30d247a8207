"""Time sources. Everything that waits or schedules asks a :class:`Clock`.

:class:`SystemClock` is the real one; :class:`FakeClock` is a test seam whose time only
moves when a test calls :meth:`FakeClock.advance`, so schedulers, retries, rate limits and
beat can be tested without sleeping.

Code that waits for a time to come never asks which clock it has. It asks the clock how
long that is in real time (:meth:`Clock.real_timeout`: None when the clock moves only when
told) and subscribes to hear when the clock jumps (:meth:`Clock.subscribe`); a real clock
answers the first and never calls the second.
"""

from __future__ import annotations

import threading
import time as _time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Protocol, runtime_checkable

__all__ = ["SYSTEM_CLOCK", "Clock", "FakeClock", "SystemClock", "utc"]


_LATEST = datetime.max.replace(tzinfo=UTC)
_EARLIEST = datetime.min.replace(tzinfo=UTC)


def utc(seconds: float) -> datetime:
    """Epoch ``seconds`` as an aware UTC datetime. A time no datetime holds (past the year
    9999, or before the year 1: another producer may write one) is shown as the nearest
    one that does, instead of raising."""
    try:
        return datetime.fromtimestamp(seconds, tz=UTC)
    except (OverflowError, OSError, ValueError):
        return _LATEST if seconds > 0 else _EARLIEST


@runtime_checkable
class Clock(Protocol):
    """A source of wall time (epoch seconds) and monotonic time."""

    def time(self) -> float:
        """Seconds since the epoch (UTC)."""
        ...

    def monotonic(self) -> float:
        """A clock that never goes backwards, for durations and deadlines."""
        ...

    def real_timeout(self, seconds: float) -> float | None:
        """How long to wait, in real seconds, for ``seconds`` of this clock's time to pass:
        ``seconds`` on a clock that runs by itself, None on one that moves only when told
        (a waiter then learns of each move through :meth:`subscribe`)."""
        ...

    def subscribe(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback`` whenever this clock jumps forward, from the thread that moved
        it; returns the function that unsubscribes. A clock that runs by itself never
        jumps, so it never calls ``callback``."""
        ...

    @property
    def is_fake(self) -> bool:
        """True for test clocks that only move when told to."""
        ...


def _unsubscribed() -> None:
    """What :meth:`SystemClock.subscribe` returns: there is nothing to undo."""


class SystemClock:
    """The real clock."""

    __slots__ = ()
    time = staticmethod(_time.time)
    monotonic = staticmethod(_time.monotonic)

    def real_timeout(self, seconds: float) -> float:
        """``seconds``: real time passes by itself."""
        return seconds

    def subscribe(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Nothing to subscribe to: the real clock never jumps."""
        return _unsubscribed

    @property
    def is_fake(self) -> bool:
        """Always False."""
        return False


SYSTEM_CLOCK = SystemClock()


class FakeClock:
    """A clock for tests: time moves only through :meth:`advance` and :meth:`set`."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._lock = threading.Lock()
        self._now = float(start)
        self._mono = 1_000.0
        self._listeners: list[Callable[[], None]] = []

    @property
    def is_fake(self) -> bool:
        """Always True."""
        return True

    def time(self) -> float:
        """The fake wall time."""
        return self._now

    def monotonic(self) -> float:
        """The fake monotonic time."""
        return self._mono

    def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds`` (must not be negative) and wake listeners."""
        if seconds < 0:
            raise ValueError("a clock cannot go backwards")
        with self._lock:
            self._now += seconds
            self._mono += seconds
            listeners = list(self._listeners)
        for listener in listeners:
            listener()

    def set(self, epoch: float) -> None:
        """Jump the wall time to ``epoch`` (forward only)."""
        self.advance(max(0.0, epoch - self._now))

    def real_timeout(self, seconds: float) -> float | None:
        """None: fake time passes only through :meth:`advance`."""
        return None

    def subscribe(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback`` after each advance; returns a function that unsubscribes."""
        with self._lock:
            self._listeners.append(callback)

        def remove() -> None:
            with self._lock:
                if callback in self._listeners:
                    self._listeners.remove(callback)

        return remove
