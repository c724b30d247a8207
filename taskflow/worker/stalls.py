"""Warns when the worker's event loop stops turning.

The loop renews the leases of the messages the worker holds, writes its heartbeat and
settles outcomes. An ``async def`` body that blocks it (``time.sleep``, a blocking client,
a long computation), or a C extension in a sync body's thread that keeps the interpreter
lock, stops all of that: past its lease, a message is delivered to another worker while
its body still runs here. The broker's side tells only that a lease ran out; this watch
tells which tasks were running when the loop stopped, while it is stopped.

A stage of the worker ticks on the loop every :data:`TICK` seconds; a thread checks the
ticks and, once the loop has missed them for :data:`STALL_AFTER` seconds, logs a warning
naming the tasks in their own code, then one more line when the loop turns again. Each
stall counts once in the worker's ``loop_stalls`` counter (its heartbeat, ``taskflow
stats``) and, instrumented, in ``taskflow_worker_loop_stalls_total``.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from typing import Final

__all__ = ["STALL_AFTER", "TICK", "StallWatch"]

log = logging.getLogger("taskflow.worker")

STALL_AFTER: Final = 2.0
"""Seconds without a turn of the loop before the worker warns."""
TICK: Final = 0.25
"""Seconds between the loop's ticks (and the watching thread's checks)."""


class StallWatch:
    """The loop's ticks and the thread that watches them, for the worker ``name``;
    ``running`` describes the tasks in their own code and ``counted`` counts a stall (both
    called from the watching thread while the loop is stopped)."""

    def __init__(
        self,
        name: str,
        running: Callable[[], list[str]],
        *,
        counted: Callable[[], None] = lambda: None,
        after: float = STALL_AFTER,
        tick: float = TICK,
    ) -> None:
        self.name = name
        self.running = running
        self.counted = counted
        self.after = after
        self.tick = tick
        self._last = time.monotonic()
        self._since: float | None = None  # when the reported stall began
        self._stop = threading.Event()

    async def run(self) -> None:
        """Tick until cancelled, with the watching thread beside."""
        self._last = time.monotonic()
        self._stop.clear()
        thread = threading.Thread(target=self._watch, name="taskflow-stall-watch", daemon=True)
        thread.start()
        try:
            while True:
                await asyncio.sleep(self.tick)
                self._turned()
        finally:
            self._stop.set()  # wakes the thread at once: it is gone when the worker is
            thread.join(1.0)

    def _turned(self) -> None:
        now = time.monotonic()
        since, self._since = self._since, None
        self._last = now
        if since is not None:
            log.warning(
                "worker %s: its event loop turns again, after %.1f s", self.name, now - since
            )

    def _watch(self) -> None:
        while not self._stop.wait(self.tick):
            last = self._last
            if self._since is None and time.monotonic() - last >= self.after:
                self._since = last
                self.stalled(time.monotonic() - last)

    def stalled(self, seconds: float) -> None:
        """The loop has not turned for ``seconds``: count the stall and say so."""
        self.counted()
        running = ", ".join(self.running()) or "none"
        log.warning(
            "worker %s: its event loop has not turned for %.1f s (tasks in their own code: "
            "%s); meanwhile no lease is renewed, and a message held past its lease goes to "
            "another worker: blocking calls belong in a def body (or asyncio.to_thread), not "
            "in an async def one",
            self.name,
            seconds,
            running,
        )
