"""The in-memory broker's state: queues, the delay and lease heaps, dead letters.

:class:`MemoryState` holds every message of a :class:`~taskflow.brokers.memory.MemoryBroker`
and the operations on them. The broker (publishing, fetching, settling) and its
:class:`~taskflow.brokers._memory_admin.MemoryAdmin` (operator actions) share it
explicitly; neither reaches into the other.
"""

from __future__ import annotations

import heapq
import itertools
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .._waiters import Waiters
from ..clock import Clock
from ..errors import QueueFull
from .base import DeadLetter, Message

__all__ = ["MemoryState", "QueueState", "Stored"]


@dataclass(slots=True)
class Stored:
    """One message as the broker keeps it."""

    id: str
    queue: str
    body: bytes
    priority: int
    max_deliveries: int
    deliveries: int = 0
    seq: int = 0  # heap entry that stands for this message; older entries are stale
    token: int = 0  # current lease token; 0 = not leased
    deadline: float = 0.0  # lease deadline while inflight
    state: str = "ready"  # ready | scheduled | inflight


class QueueState:
    """One queue: its ready heap, pause flag and bound."""

    __slots__ = ("heap", "max_length", "paused", "size")

    def __init__(self) -> None:
        self.heap: list[tuple[int, int, str]] = []
        self.paused = False
        self.max_length: int | None = None
        self.size = 0  # ready + scheduled messages that belong to this queue


class MemoryState:
    """Every message of one memory broker, thread-safe under :attr:`lock`.

    ``publish``, ``settle``, ``cancel``, ``declare`` and ``take_lost`` take the lock
    themselves. The building blocks (``queue``, ``insert``, ``take``, ``next_due``,
    ``catch_up``, ``promote``, ``reclaim``) expect the caller to hold it, so that an
    operation made of several of them is atomic.
    """

    def __init__(self, lease: float, clock: Clock) -> None:
        """An empty broker state; ``lease`` is the seconds a delivery stays leased."""
        self.lease = lease
        self.clock = clock
        self.lock = threading.Lock()
        self.queues: dict[str, QueueState] = {}
        self.messages: dict[str, Stored] = {}
        self.scheduled: list[tuple[float, int, str]] = []
        self.leases: list[tuple[float, int, str]] = []  # (deadline, token, id)
        self.dead: dict[str, list[DeadLetter]] = {}
        self.lost: list[DeadLetter] = []
        self.waiters = Waiters()
        self._seq = itertools.count()
        self._tokens = itertools.count(1)
        # A clock that moves only when told wakes waiting fetches itself: a message that
        # became due is then taken at once (a real clock never calls this). For the
        # state's whole life: a closed broker keeps its messages and may be used again.
        clock.subscribe(self.waiters.notify_all)

    def queue(self, name: str) -> QueueState:
        """The queue called ``name``, created on first use."""
        q = self.queues.get(name)
        if q is None:
            q = self.queues[name] = QueueState()
        return q

    def declare(self, name: str, max_length: int | None) -> None:
        """Create the queue and set its bound."""
        with self.lock:
            self.queue(name).max_length = max_length

    # -- publishing ------------------------------------------------------------------
    def publish(self, messages: Sequence[Message]) -> None:
        """Store all of ``messages`` or none (QueueFull), then wake waiting fetches."""
        with self.lock:
            self.insert(messages)
        self.waiters.notify_all()

    def insert(self, messages: Sequence[Message]) -> None:
        """:meth:`publish` without the lock and the wake-up."""
        self._check_room(messages)
        now = self.clock.time()
        for msg in messages:
            # An exact-size copy: JSON encoders over-allocate, and a long-lived body would
            # pin (and fragment) its whole scratch buffer.
            body = bytes(memoryview(msg.body))
            stored = Stored(msg.id, msg.queue, body, msg.priority, msg.max_deliveries)
            old = self.messages.get(msg.id)
            if old is not None and old.state != "inflight":
                self.queue(old.queue).size -= 1
            self.messages[msg.id] = stored
            self.queue(msg.queue).size += 1
            self._place(stored, msg.eta, now)

    def _check_room(self, messages: Sequence[Message]) -> None:
        wanted: dict[str, int] = {}
        for msg in messages:
            wanted[msg.queue] = wanted.get(msg.queue, 0) + 1
        for name, count in wanted.items():
            q = self.queues.get(name)
            if q is not None and q.max_length is not None and q.size + count > q.max_length:
                raise QueueFull(
                    f"queue {name!r} is full ({q.size}/{q.max_length}); nothing was enqueued"
                )

    def _place(self, stored: Stored, eta: float | None, now: float) -> None:
        # Heap entries are removed lazily, so a cancelled-then-republished id can leave an
        # older entry behind; stamping the live entry's seq lets pops recognise the stale one.
        stored.seq = seq = next(self._seq)
        if eta is not None and eta > now:
            stored.state = "scheduled"
            heapq.heappush(self.scheduled, (eta, seq, stored.id))
        else:
            stored.state = "ready"
            heapq.heappush(self.queue(stored.queue).heap, (-stored.priority, seq, stored.id))

    # -- consuming -------------------------------------------------------------------
    def take(self, queues: Sequence[str], limit: int) -> list[Stored]:
        """Lease up to ``limit`` ready messages, taking ``queues`` in order."""
        now = self.clock.time()
        self.promote(now)
        self.reclaim(now)
        out: list[Stored] = []
        for name in queues:
            q = self.queues.get(name)
            if q is None or q.paused:
                continue
            while q.heap and len(out) < limit:
                _, seq, mid = heapq.heappop(q.heap)
                stored = self.messages.get(mid)
                if stored is None or stored.seq != seq or stored.state != "ready":
                    continue  # cancelled, purged or superseded: lazily skipped
                out.append(self._lease_out(stored, now))
            if len(out) >= limit:
                break
        return out

    def _lease_out(self, stored: Stored, now: float) -> Stored:
        stored.state = "inflight"
        stored.deliveries += 1
        stored.token = next(self._tokens)
        self.queue(stored.queue).size -= 1
        stored.deadline = now + self.lease
        heapq.heappush(self.leases, (stored.deadline, stored.token, stored.id))
        return stored

    def next_due(self) -> float | None:
        """When the next scheduled message is due or the next lease runs out (clock time)."""
        candidates = []
        if self.scheduled:
            candidates.append(self.scheduled[0][0])
        if self.leases:
            candidates.append(self.leases[0][0])
        return min(candidates) if candidates else None

    def catch_up(self) -> None:
        """Release due messages and reclaim lost leases, as the next fetch would."""
        now = self.clock.time()
        self.promote(now)
        self.reclaim(now)

    def promote(self, now: float) -> None:
        """Make scheduled messages that are due by ``now`` ready."""
        while self.scheduled and self.scheduled[0][0] <= now:
            _, seq, mid = heapq.heappop(self.scheduled)
            stored = self.messages.get(mid)
            if stored is not None and stored.seq == seq and stored.state == "scheduled":
                self._place(stored, None, now)

    def reclaim(self, now: float) -> None:
        """Deliver again (or dead-letter as ``worker_lost``) what ran out of lease."""
        while self.leases and self.leases[0][0] <= now:
            _, token, mid = heapq.heappop(self.leases)
            stored = self.messages.get(mid)
            if stored is None or stored.state != "inflight" or stored.token != token:
                continue  # settled
            if stored.deadline > now:
                continue  # renewed: a later entry stands for the new deadline
            stored.token = 0
            if stored.deliveries >= stored.max_deliveries:
                self.bury(stored, "worker_lost", "lease expired", now)
                self.lost.append(self.dead[stored.queue][-1])
            else:
                self.queue(stored.queue).size += 1
                self._place(stored, None, now)

    # -- settling --------------------------------------------------------------------
    def settle(self, mid: str, token: int, action: str, **kw: Any) -> bool:
        """Apply ``action`` to the delivery leased under ``token``; False if it was not
        (the lease was lost). ``action``: ``touch``, ``ack``, ``requeue``, ``retry``
        (``body``, ``delay``, ``max_deliveries``) or ``dead`` (``reason``, ``error``)."""
        with self.lock:
            stored = self.messages.get(mid)
            if stored is None or stored.state != "inflight" or stored.token != token:
                return False
            now = self.clock.time()
            if action == "touch":
                stored.deadline = now + self.lease
                heapq.heappush(self.leases, (stored.deadline, token, mid))
                return True
            stored.token = 0
            if action == "ack":
                del self.messages[mid]
            elif action == "requeue":
                stored.deliveries -= 1
                self.queue(stored.queue).size += 1
                self._place(stored, None, now)
            elif action == "retry":
                stored.body = kw["body"]
                stored.deliveries = 0
                stored.max_deliveries = max(1, kw["max_deliveries"])
                self.queue(stored.queue).size += 1
                self._place(stored, now + max(0.0, kw["delay"]), now)
            else:
                self.bury(stored, kw["reason"], kw.get("error"), now)
        self.waiters.notify_all()
        return True

    def bury(self, stored: Stored, reason: str, error: str | None, now: float) -> None:
        """Move ``stored`` to its queue's dead-letter list."""
        self.messages.pop(stored.id, None)
        self.dead.setdefault(stored.queue, []).append(
            DeadLetter(
                stored.id,
                stored.queue,
                stored.body,
                reason,
                error,
                now,
                stored.deliveries,
                {"priority": stored.priority, "max_deliveries": stored.max_deliveries},
            )
        )

    def take_lost(self) -> list[DeadLetter]:
        """Messages dead-lettered as ``worker_lost`` since the last call."""
        with self.lock:
            lost, self.lost = self.lost, []
        return lost

    def cancel(self, message_id: str, queue: str) -> bool:
        """Remove a ready or scheduled message; True if removed."""
        with self.lock:
            stored = self.messages.get(message_id)
            if stored is None or stored.state == "inflight" or stored.queue != queue:
                return False
            del self.messages[message_id]
            self.queue(stored.queue).size -= 1
            return True
