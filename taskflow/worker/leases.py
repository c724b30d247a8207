"""Lease renewal, per delivery and deadline-driven.

A broker delivers a message again once its lease runs out, so every delivery the worker
holds (buffered, running, settling, or waiting out an outage while it is admitted) is
renewed a third of its lease after it was taken, and every third of a lease after that.
The deadlines are kept in one heap; the renewal task sleeps until the earliest one and is
woken when a delivery with an earlier deadline arrives, so a new delivery never waits for
a period computed from older ones. The entries of settled deliveries are cleared out of the
heap in passes, so that it holds about as many deliveries as the worker does.

The keeper also knows, per delivery, until when its lease is assured: two thirds of a lease
after the last time it was confirmed (taken, or renewed), counted from before the call that
confirmed it. A body starts only on a delivery whose lease is assured
(:meth:`LeaseKeeper.assured`), else it is renewed first (:meth:`LeaseKeeper.renewed`); one
whose renewals failed while the broker refused writes may have been delivered again to
another worker meanwhile, and must not run here as well.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
from collections.abc import Iterable

from ..brokers.base import Broker, Delivery
from ..errors import ConfigError
from ..kernel import TaskDef
from ..urls import mask_url
from .resilience import Outage

__all__ = ["LeaseKeeper", "check_hold"]

log = logging.getLogger("taskflow.worker")

# A renewal that failed (the broker is briefly away) is tried again this soon, at most.
_RETRY_AFTER = 1.0
# Entries of dropped deliveries the heap may keep beyond twice the held ones (see drop).
_SLACK = 256


def check_hold(tasks: Iterable[TaskDef], broker: Broker, default_timeout: float | None) -> None:
    """As the worker starts: ``ConfigError`` naming the first task whose timeout (its own,
    or the app's ``default_timeout``) is not shorter than the longest the broker lets a
    delivery stay unacknowledged (:meth:`~taskflow.brokers.base.Broker.max_hold`).

    A timeout given per call (``apply_async(timeout=...)``) is not known here; the broker
    counts a delivery held past its bound as lost.
    """
    bound = broker.max_hold()
    if bound is None:
        return
    for task in tasks:
        timeout = task.options.timeout if task.options.timeout is not None else default_timeout
        if timeout is None or timeout >= bound:
            runs = "has no timeout" if timeout is None else f"has a {timeout:g}s timeout"
            raise ConfigError(
                f"task {task.name!r} {runs}, but the broker {mask_url(broker.url)} takes a "
                f"delivery back after {bound:g}s unacknowledged (consumer_timeout); give the "
                "task a shorter timeout or raise the server's consumer_timeout and the "
                "broker's consumer_timeout option"
            )


class LeaseKeeper:
    """Renews the leases of the deliveries a worker holds; run :meth:`run` as a task."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._heap: list[tuple[float, int, Delivery]] = []
        # The held deliveries, each with the loop time until which its lease is assured
        # (see the module).
        self._held: dict[Delivery, float] = {}
        self._seq = itertools.count()
        self._wake: asyncio.Event | None = None
        # The loop :meth:`run` runs on, while it does: every task's :meth:`assured` asks
        # its time (``asyncio.get_running_loop`` is a system call each time).
        self._loop: asyncio.AbstractEventLoop | None = None
        self._outage = Outage(f"worker {name}: lease renewal")
        self.waiting = asyncio.Event()
        """Set while :meth:`run` waits for the next due renewal (a test seam)."""

    def __len__(self) -> int:
        return len(self._held)

    def hold(self, delivery: Delivery, since: float) -> None:
        """Keep renewing ``delivery``, taken at loop time ``since``, until :meth:`drop`."""
        lease = delivery.lease
        if not lease:
            return
        self._held[delivery] = since + 2 * lease / 3
        self._schedule(delivery, since + lease / 3)

    def assured(self, delivery: Delivery) -> bool:
        """Whether ``delivery``'s lease is known to hold for a third of a lease more (True
        for a delivery without a lease; False for one not held here any more, e.g. found
        lost by its renewal)."""
        until = self._held.get(delivery)
        if until is None:
            return not delivery.lease
        return (self._loop or asyncio.get_running_loop()).time() < until

    def renewed(self, delivery: Delivery, since: float, held: bool) -> None:
        """``delivery`` was renewed by a call made at loop time ``since`` (``held``: and
        its lease held; False: it was lost, and is dropped)."""
        if not held:
            self.drop(delivery)
        elif delivery in self._held:
            self._assure(delivery, since)

    def _assure(self, delivery: Delivery, since: float) -> None:
        lease = delivery.lease or 0.0
        self._held[delivery] = max(self._held[delivery], since + 2 * lease / 3)

    def drop(self, delivery: Delivery) -> None:
        """Stop renewing ``delivery`` (settled, handed back, or left to expire)."""
        self._held.pop(delivery, None)
        # Its entry would stay in the heap until it came due, a third of a lease later
        # (10 s at the brokers' default), holding the delivery and its message: a worker
        # settling thousands of tasks a second would keep tens of thousands. Once such
        # entries outnumber the held deliveries (and a few hundred), they go, in one pass.
        heap = self._heap
        if len(heap) > _SLACK + 2 * len(self._held):
            held = self._held
            heap[:] = [entry for entry in heap if entry[2] in held]
            heapq.heapify(heap)

    def _schedule(self, delivery: Delivery, due: float) -> None:
        earliest = self._heap[0][0] if self._heap else None
        heapq.heappush(self._heap, (due, next(self._seq), delivery))
        if self._wake is not None and (earliest is None or due < earliest):
            self._wake.set()

    async def run(self) -> None:
        """Renew leases as they come due, until cancelled."""
        loop = self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        try:
            while True:
                now = loop.time()
                due: dict[Delivery, None] = {}
                while self._heap and self._heap[0][0] <= now:
                    _, _, delivery = heapq.heappop(self._heap)
                    if delivery in self._held:
                        due[delivery] = None
                if due:
                    await asyncio.gather(*(self._renew(d) for d in due))
                    continue
                self._wake.clear()
                timeout = self._heap[0][0] - now if self._heap else None
                self.waiting.set()
                try:
                    async with asyncio.timeout(timeout):
                        await self._wake.wait()
                except TimeoutError:
                    pass
                self.waiting.clear()
        finally:
            self._wake = None
            self._loop = None
            self.waiting.clear()

    async def _renew(self, delivery: Delivery) -> None:
        lease = delivery.lease or 0.0
        loop = asyncio.get_running_loop()
        since = loop.time()
        try:
            renewed = await delivery.touch()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._outage.failed(exc)
            if delivery in self._held:
                self._schedule(delivery, loop.time() + min(lease / 6, _RETRY_AFTER))
            return
        self._outage.recovered()
        if not renewed:
            # Too late: the broker has given it to somebody else; settling it is fenced.
            self._held.pop(delivery, None)  # never assured again
            log.warning(
                "worker %s: the lease of message %s ran out before it was renewed; "
                "the broker delivers it again",
                self._name,
                delivery.id,
            )
            return
        if delivery in self._held:
            self._assure(delivery, since)
            self._schedule(delivery, loop.time() + lease / 3)
