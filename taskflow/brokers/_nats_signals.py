"""What wakes the NATS broker's waiting fetches, and which priority levels they skip.

A fetch pulls the ten priority levels of each queue. To keep a one-message fetch from
costing ten round trips, a level found empty is skipped until a publish to it is
announced (``mark``, from this process or over ``P.n`` from another) or :data:`RESCAN`
seconds passed: a message redelivered because a *remote* worker's lease ran out announces
itself to nobody, so it is seen within that second.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from typing import Any

__all__ = ["RESCAN", "Signals"]

RESCAN = 1.0  # seconds a priority level seen empty is skipped without an announcement


class Signals:
    """The waiting fetches of one broker and the levels they know to be empty."""

    def __init__(self) -> None:
        self._wakers: list[asyncio.Future[None]] = []
        self._known_empty: set[tuple[str, int]] = set()
        self._generation: dict[tuple[str, int], int] = {}
        self.rescan = True
        """Forget every empty level at the next fetch (a lease may have run out)."""
        self._last_scan = 0.0
        self.delay_dirty = True
        """A delayed message was published: the next fetch pulls the delay stream."""

    def waker(self) -> asyncio.Future[None]:
        """A future resolved by the next :meth:`wake_all` (drop it with :meth:`drop`)."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._wakers.append(fut)
        return fut

    def drop(self, fut: asyncio.Future[None]) -> None:
        """Forget a waker that is no longer waited on."""
        if fut in self._wakers:
            self._wakers.remove(fut)

    def wake_all(self) -> None:
        """Wake every waiting fetch."""
        wakers, self._wakers = self._wakers, []
        for fut in wakers:
            if not fut.done():
                fut.set_result(None)

    def mark(self, delayed: bool, levels: Iterable[Any]) -> None:
        """Something was published: to the delay stream (``delayed``) and/or to these
        ``(queue, level)`` pairs. Their levels are no longer known empty; fetches wake."""
        self.delay_dirty = self.delay_dirty or delayed
        for queue, level in levels:
            key = (str(queue), int(level))
            self._generation[key] = self._generation.get(key, 0) + 1
            self._known_empty.discard(key)
        self.wake_all()

    def forget_empty(self) -> None:
        """Forget every level known empty (an announcement could not be read)."""
        self._known_empty.clear()

    def start_scan(self) -> None:
        """At the start of a fetch: forget the empty levels once a rescan is due."""
        if self.rescan or time.monotonic() - self._last_scan >= RESCAN:
            # Redeliveries (a lease ran out somewhere) announce themselves to nobody.
            self.rescan = False
            self._last_scan = time.monotonic()
            self._known_empty.clear()

    def is_empty(self, key: tuple[str, int]) -> bool:
        """True while ``(queue, level)`` is known to hold nothing."""
        return key in self._known_empty

    def generation(self, key: tuple[str, int]) -> int:
        """How many publishes to ``(queue, level)`` were announced (a change counter)."""
        return self._generation.get(key, 0)

    def found_empty(self, key: tuple[str, int], generation: int) -> None:
        """A pull found ``(queue, level)`` empty; it stays skipped unless a publish was
        announced since ``generation`` was read."""
        if self._generation.get(key, 0) == generation:
            self._known_empty.add(key)
