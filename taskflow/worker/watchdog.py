"""Task deadlines, with one timer for all of them.

An ``asyncio.timeout`` per task costs a timer handle per run; the watchdog keeps running
jobs in one deque per timeout value (deadlines within a deque are in start order), so
adding is an append and the timer only ever looks at each deque's head.
"""

from __future__ import annotations

import asyncio
from collections import deque

from .scheduler import Job

__all__ = ["Watchdog"]

_MAX_NAP = 1.0  # finished jobs are swept from the heads at least this often


class Watchdog:
    """Cancels jobs still in their own code when their deadline passes."""

    def __init__(self, concurrency: int) -> None:
        self._lanes: dict[float, deque[tuple[float, Job]]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake_at = 0.0
        self._compact_at = 4 * concurrency + 64

    def watch(self, job: Job, timeout: float) -> None:
        """Start watching ``job``; it must finish within ``timeout`` seconds."""
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        lane = self._lanes.get(timeout)
        if lane is None:
            lane = self._lanes[timeout] = deque()
        else:
            # Jobs mostly finish in start order: drop finished heads as we go.
            while lane and not lane[0][1].in_user_code:
                lane.popleft()
            if len(lane) > self._compact_at:
                # A long job at the head pins everything behind it: keep the live ones.
                lane = self._lanes[timeout] = deque(e for e in lane if e[1].in_user_code)
        lane.append((deadline, job))
        if self._timer is None or deadline < self._wake_at:
            if self._timer is not None:
                self._timer.cancel()
            self._wake_at = min(deadline, loop.time() + _MAX_NAP)
            self._timer = loop.call_at(self._wake_at, self._sweep)

    def _sweep(self) -> None:
        loop = asyncio.get_event_loop()
        now = loop.time()
        wake = now + _MAX_NAP
        for timeout in list(self._lanes):
            lane = self._lanes[timeout]
            while lane:
                deadline, job = lane[0]
                if not job.in_user_code:
                    lane.popleft()
                elif deadline <= now:
                    lane.popleft()
                    _expire(job)
                else:
                    wake = min(wake, deadline)
                    break
            if not lane:
                del self._lanes[timeout]
        self._wake_at = wake
        self._timer = loop.call_at(wake, self._sweep) if self._lanes else None

    def close(self) -> None:
        """Stop the timer and forget every job (and the loop: a worker may run again)."""
        self._loop = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._lanes.clear()


def _expire(job: Job) -> None:
    if job.cancel_reason is not None or job.handle is None or job.handle.done():
        return
    job.cancel_reason = "timeout"
    if job.ctx is not None:
        job.ctx.cancelled.set("timeout")
    job.handle.cancel()
