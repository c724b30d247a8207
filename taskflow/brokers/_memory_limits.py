"""The memory broker's limiter: the shared limits of one process, kept in memory.

Every worker of a process that uses one :class:`~taskflow.brokers.memory.MemoryBroker`
shares its limits, which is all the sharing the memory broker has. Time comes from the
broker's clock, so tests drive tokens and permit expiry with a ``FakeClock``.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

from ..clock import Clock
from .limits import ClusterLimiter, gcra

__all__ = ["MemoryLimiter"]


class MemoryLimiter(ClusterLimiter):
    """Token buckets and permits in a dict; safe from any thread."""

    def __init__(self, lease: float, clock: Clock) -> None:
        self.lease = lease
        self._clock = clock
        self._tat: dict[str, float] = {}
        self._holders: dict[str, dict[str, float]] = {}
        self._lock = threading.Lock()

    async def take_token(self, key: str, rate: float, burst: int) -> float:
        """GCRA on the clock's monotonic time."""
        with self._lock:
            wait, tat = gcra(self._tat.get(key), self._clock.monotonic(), rate, burst)
            if tat is not None:
                self._tat[key] = tat
            return wait

    def _live(self, key: str, now: float) -> dict[str, float]:
        holders = self._holders.setdefault(key, {})
        for holder in [h for h, expiry in holders.items() if expiry <= now]:
            del holders[holder]
        return holders

    async def acquire(self, key: str, holder: str, limit: int) -> float:
        """A permit if fewer than ``limit`` unexpired ones are held."""
        with self._lock:
            now = self._clock.monotonic()
            holders = self._live(key, now)
            if holder in holders or len(holders) < limit:
                holders[holder] = now + self.lease
                return 0.0
            return max(0.0, min(holders.values()) - now)

    async def renew(self, key: str, holders: Sequence[str]) -> list[bool]:
        """Extend the permits still held."""
        with self._lock:
            now = self._clock.monotonic()
            live = self._live(key, now)
            renewed = []
            for holder in holders:
                if holder in live:
                    live[holder] = now + self.lease
                renewed.append(holder in live)
            return renewed

    async def release(self, key: str, holder: str) -> None:
        """Drop ``holder``'s permit."""
        with self._lock:
            self._holders.get(key, {}).pop(holder, None)
