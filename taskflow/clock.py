"""Time sources. Everything that waits or schedules asks a :class:`Clock`.

:class:`SystemClock` is the real one; :class:`FakeClock` is a test seam whose time only
moves when a test calls :meth:`FakeClock.advance`, so schedulers, retries, rate limits and
beat can be tested without sleeping.
"""

from __future__ import annotations

import threading
import time as _time
from collections.abc import Callable
from typing import Protocol, runtime_checkable

__all__ = ["SYSTEM_CLOCK", "Clock", "FakeClock", "SystemClock"]


@runtime_checkable
class Clock(Protocol):
    """A source of wall time (epoch seconds) and monotonic time."""

    def time(self) -> float:
        """Seconds since the epoch (UTC)."""
        ...

    def monotonic(self) -> float:
        """A clock that never goes backwards, for durations and deadlines."""
        ...

    @property
    def is_fake(self) -> bool:
        """True for test clocks that only move when told to."""
        ...


class SystemClock:
    """The real clock."""

    __slots__ = ()
    time = staticmethod(_time.time)
    monotonic = staticmethod(_time.monotonic)

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

    def on_advance(self, listener: Callable[[], None]) -> Callable[[], None]:
        """Call ``listener`` after each advance; returns a function that unsubscribes."""
        with self._lock:
            self._listeners.append(listener)

        def remove() -> None:
            with self._lock:
                if listener in self._listeners:
                    self._listeners.remove(listener)

        return remove
