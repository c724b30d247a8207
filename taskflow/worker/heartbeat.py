"""A worker's heartbeat: who it is and what it runs, written to the result store.

The worker writes its entry (:meth:`Heartbeat.info`) once as it starts, then every
``interval`` seconds on its clock, and removes it when it stops cleanly. Each write keeps
the entry for ``retention`` seconds (default ``max(10 * interval, 60)``), so a worker that
died without stopping (SIGKILL, a lost machine) stays visible with a ``last_seen`` that no
longer moves -- the operations API shows it as lost after three intervals -- and disappears
once its retention passes. Nobody asks the workers anything: every reader reads the store.

A write that fails (the backend is down) never stops the worker: the first failure of an
outage is logged at WARNING, the recovery at INFO, and the next write comes on time.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from .._waiters import within
from ..clock import Clock
from ..results.base import ResultStore
from .resilience import describe

__all__ = ["DEFAULT_INTERVAL", "MAX_RUNNING_IDS", "Heartbeat", "default_retention"]

log = logging.getLogger("taskflow.worker")

DEFAULT_INTERVAL = 5.0
"""Seconds between heartbeats unless the worker is told otherwise."""
MAX_RUNNING_IDS = 100
"""At most this many running task ids go into one entry (``running_count`` has them all)."""
_REMOVE_TIMEOUT = 2.0  # a stop does not wait longer for a store that does not answer


def default_retention(interval: float) -> float:
    """How long an entry outlives its last write: ten intervals, at least a minute."""
    return max(10.0 * interval, 60.0)


def checked_interval(interval: float, retention: float | None) -> tuple[float, float]:
    """``(interval, retention)`` after checking them (ValueError names the bad option)."""
    if isinstance(interval, bool) or not isinstance(interval, int | float) or not interval > 0:
        raise ValueError(f"worker heartbeat must be a positive number of seconds, got {interval!r}")
    if retention is None:
        return float(interval), default_retention(float(interval))
    if isinstance(retention, bool) or not isinstance(retention, int | float):
        raise ValueError(f"worker heartbeat_retention must be seconds, got {retention!r}")
    if retention <= interval:
        raise ValueError(
            f"worker heartbeat_retention ({retention!r} s) must be longer than the heartbeat "
            f"interval ({interval!r} s), or the entry of a live worker would come and go"
        )
    return float(interval), float(retention)


class Heartbeat:
    """Writes one worker's entry to ``store`` (see the module docstring).

    ``running`` returns ``(task id, task name)`` of every task running now; ``counters``
    the worker's counters by name.
    """

    def __init__(
        self,
        store: ResultStore,
        *,
        worker_id: str,
        queues: Sequence[str],
        concurrency: int,
        pool: str = "threads",
        running: Callable[[], Iterable[tuple[str, str]]],
        counters: Callable[[], Mapping[str, int]],
        interval: float,
        retention: float,
        clock: Clock,
    ) -> None:
        self.store = store
        self.worker_id = worker_id
        self.queues = list(queues)
        self.concurrency = concurrency
        self.pool = pool
        self.interval = interval
        self.retention = retention
        self.clock = clock
        self._running = running
        self._counters = counters
        self._started_at: float | None = None
        self._failing = False
        self._beats = 0
        self._cond = threading.Condition()
        self._due: float | None = None  # the next write, on the clock's monotonic time

    @property
    def beats(self) -> int:
        """How many heartbeats were written so far."""
        return self._beats

    def wait_beats(self, count: int, timeout: float) -> bool:
        """Test seam: block (any thread but the loop's) until ``count`` heartbeats were
        written in all, at most ``timeout`` real seconds; True if they were."""
        with self._cond:
            return self._cond.wait_for(lambda: self._beats >= count, timeout)

    def info(self) -> dict[str, Any]:
        """The entry as it would be written now."""
        now = self.clock.time()
        if self._started_at is None:
            self._started_at = now
        running = list(self._running())
        return {
            "id": self.worker_id,
            "hostname": socket.gethostname(),
            "pid": os.getpid(),
            "queues": list(self.queues),
            "concurrency": self.concurrency,
            "pool": self.pool,
            "running": [task_id for task_id, _ in running[:MAX_RUNNING_IDS]],
            "running_count": len(running),
            "tasks": dict(Counter(name for _, name in running)),
            "counters": dict(self._counters()),
            "started_at": self._started_at,
            "last_seen": now,
            "heartbeat": self.interval,
        }

    async def beat(self) -> bool:
        """Write the entry once (within one interval); True if it was written.

        Never raises but for cancellation: a failure is logged once per outage.
        """
        # Counted from the start of this write, so a slow write does not make them drift.
        self._due = self.clock.monotonic() + self.interval
        try:
            entry = self.info()
            await within(self.store.put_worker(entry, retention=self.retention), self.interval)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if not self._failing:
                self._failing = True
                log.warning(
                    "worker %s: heartbeat to %r failed (%s); the worker keeps running and "
                    "tries again every %gs",
                    self.worker_id,
                    self.store,
                    describe(exc),
                    self.interval,
                )
            return False
        if self._failing:
            self._failing = False
            log.info("worker %s: heartbeat written again", self.worker_id)
        with self._cond:
            self._beats += 1
            self._cond.notify_all()
        return True

    async def run(self) -> None:
        """Write the entry every ``interval`` seconds until cancelled (the first write is
        :meth:`beat`, called by the worker as it starts)."""
        while True:
            if self._due is None:
                self._due = self.clock.monotonic() + self.interval
            await self._pause_until(self._due)
            await self.beat()

    async def remove(self) -> None:
        """Remove the entry (a clean stop); a failure is logged, never raised."""
        try:
            await within(self.store.remove_worker(self.worker_id), _REMOVE_TIMEOUT)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning(
                "worker %s: could not remove its heartbeat from %r (%s); it expires in %gs",
                self.worker_id,
                self.store,
                describe(exc),
                self.retention,
            )

    async def _pause_until(self, due: float) -> None:
        """Wait until the clock's monotonic time is ``due``: in real time, or as a test
        clock is moved."""
        loop = asyncio.get_running_loop()
        moved = asyncio.Event()

        def jumped() -> None:  # called from the thread that moved the clock
            loop.call_soon_threadsafe(moved.set)

        # Subscribed before the first check, so that a move in between is not missed.
        unsubscribe = self.clock.subscribe(jumped)
        try:
            while (left := due - self.clock.monotonic()) > 0:
                real = self.clock.real_timeout(left)
                if real is not None:
                    await asyncio.sleep(real)
                else:
                    await moved.wait()
                    moved.clear()
        finally:
            unsubscribe()
