"""The in-memory broker: the reference implementation of the broker contract.

Thread-safe and loop-agnostic: producers on any thread and workers on any event loop share
one instance. It has delays, strict priorities, leases with fencing, bounded queues, a
dead-letter list per queue, pause/resume and an in-process control channel.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from .._waiters import Waiters, wait_future
from ..clock import SYSTEM_CLOCK, Clock
from ..errors import QueueFull
from ._memory_admin import MemoryAdmin
from .base import Broker, BrokerAdmin, Capabilities, DeadLetter, Delivery, Message

__all__ = ["MemoryBroker"]


@dataclass(slots=True)
class _Stored:
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


class _Queue:
    __slots__ = ("heap", "max_length", "paused", "size")

    def __init__(self) -> None:
        self.heap: list[tuple[int, int, str]] = []
        self.paused = False
        self.max_length: int | None = None
        self.size = 0  # ready + scheduled messages that belong to this queue


def _current_task() -> asyncio.Task[Any]:
    task = asyncio.current_task()
    if task is None:
        raise RuntimeError("control messages are read from inside an asyncio task")
    return task


class MemoryDelivery(Delivery):
    """A leased delivery from :class:`MemoryBroker`."""

    __slots__ = ("_broker", "_token")

    def __init__(self, broker: MemoryBroker, stored: _Stored) -> None:
        super().__init__(stored.id, stored.queue, stored.body, stored.priority, stored.deliveries)
        self._broker = broker
        self._token = stored.token

    @property
    def lease(self) -> float | None:
        """The broker's lease length."""
        return self._broker.lease

    async def ack(self) -> bool:
        """Remove the message."""
        return self._broker._settle(self.id, self._token, "ack")

    async def nack(self, *, requeue: bool = True) -> bool:
        """Hand the message back uncounted (or drop it)."""
        return self._broker._settle(self.id, self._token, "requeue" if requeue else "ack")

    async def retry(self, body: bytes, delay: float, *, max_deliveries: int = 1) -> bool:
        """Replace the message with ``body`` due in ``delay`` seconds."""
        return self._broker._settle(
            self.id, self._token, "retry", body=body, delay=delay, max_deliveries=max_deliveries
        )

    async def touch(self) -> bool:
        """Renew the lease."""
        return self._broker._settle(self.id, self._token, "touch")

    async def dead_letter(self, reason: str, error: str | None = None) -> bool:
        """Move to the dead-letter list."""
        return self._broker._settle(self.id, self._token, "dead", reason=reason, error=error)


class MemoryBroker(MemoryAdmin, Broker, BrokerAdmin):
    """In-process broker for tests, examples and single-process apps.

    ``lease``: seconds a delivery stays leased before it is delivered again.
    ``clock``: time source for delays and leases (a :class:`~taskflow.clock.FakeClock` in tests).
    """

    capabilities: ClassVar[Capabilities] = Capabilities(blocking_publish=True)

    def __init__(self, *, lease: float = 30.0, clock: Clock | None = None) -> None:
        self.url = "memory://"
        self.lease = float(lease)
        self.clock: Clock = clock or SYSTEM_CLOCK
        self._lock = threading.Lock()
        self._seq = itertools.count()
        self._tokens = itertools.count(1)
        self._queues: dict[str, _Queue] = {}
        self._messages: dict[str, _Stored] = {}
        self._scheduled: list[tuple[float, int, str]] = []
        self._leases: list[tuple[float, int, str]] = []  # (deadline, token, id)
        self._dead: dict[str, list[DeadLetter]] = {}
        self._lost: list[DeadLetter] = []
        self._waiters = Waiters()
        self._control: list[dict[str, Any]] = []
        self._control_waiters = Waiters()
        # Weak keys: a finished reader's cursor goes with its task (no recycled id()s).
        self._control_cursors: weakref.WeakKeyDictionary[asyncio.Task[Any], int] = (
            weakref.WeakKeyDictionary()
        )
        self._unsubscribe = None
        if self.clock.is_fake:
            on_advance = getattr(self.clock, "on_advance", None)
            if on_advance is not None:
                self._unsubscribe = on_advance(self._waiters.notify_all)

    # -- lifecycle -------------------------------------------------------------------
    async def connect(self) -> None:
        """Nothing to connect."""

    async def close(self) -> None:
        """Wake any waiting fetch; the data stays (the broker is the storage)."""
        self._waiters.notify_all()

    async def declare(self, queue: str, *, max_length: int | None = None) -> None:
        """Create ``queue``; ``max_length`` bounds ready + scheduled messages."""
        with self._lock:
            self._queue(queue).max_length = max_length

    def _queue(self, name: str) -> _Queue:
        q = self._queues.get(name)
        if q is None:
            q = self._queues[name] = _Queue()
        return q

    # -- publishing ------------------------------------------------------------------
    async def publish(self, messages: Sequence[Message]) -> None:
        """Publish all or nothing."""
        self.publish_blocking(messages)

    def publish_blocking(self, messages: Sequence[Message]) -> None:
        """Thread-safe synchronous publish."""
        with self._lock:
            self._publish_locked(messages)
        self._waiters.notify_all()

    def _publish_locked(self, messages: Sequence[Message]) -> None:
        self._check_room(messages)
        now = self.clock.time()
        for msg in messages:
            # An exact-size copy: JSON encoders over-allocate, and a long-lived body would
            # pin (and fragment) its whole scratch buffer.
            body = bytes(memoryview(msg.body))
            stored = _Stored(msg.id, msg.queue, body, msg.priority, msg.max_deliveries)
            old = self._messages.get(msg.id)
            if old is not None and old.state != "inflight":
                self._queue(old.queue).size -= 1
            self._messages[msg.id] = stored
            self._queue(msg.queue).size += 1
            self._place(stored, msg.eta, now)

    def _check_room(self, messages: Sequence[Message]) -> None:
        wanted: dict[str, int] = {}
        for msg in messages:
            wanted[msg.queue] = wanted.get(msg.queue, 0) + 1
        for name, count in wanted.items():
            q = self._queues.get(name)
            if q is not None and q.max_length is not None and q.size + count > q.max_length:
                raise QueueFull(
                    f"queue {name!r} is full ({q.size}/{q.max_length}); nothing was enqueued"
                )

    def _place(self, stored: _Stored, eta: float | None, now: float) -> None:
        # Heap entries are removed lazily, so a cancelled-then-republished id can leave an
        # older entry behind; stamping the live entry's seq lets pops recognise the stale one.
        stored.seq = seq = next(self._seq)
        if eta is not None and eta > now:
            stored.state = "scheduled"
            heapq.heappush(self._scheduled, (eta, seq, stored.id))
        else:
            stored.state = "ready"
            heapq.heappush(self._queue(stored.queue).heap, (-stored.priority, seq, stored.id))

    # -- consuming -------------------------------------------------------------------
    async def fetch(
        self, queues: Sequence[str], max_messages: int, timeout: float
    ) -> list[Delivery]:
        """Take up to ``max_messages`` ready deliveries, waiting up to ``timeout``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0.0, timeout)
        while True:
            with self._lock:
                got = self._take(queues, max_messages)
                if got or timeout <= 0:
                    return got
                fut = self._waiters.register_async()
                wait = deadline - loop.time()
                next_due = self._next_due()
            if next_due is not None and not self.clock.is_fake:
                wait = min(wait, max(0.0, next_due - self.clock.time()) + 0.0005)
            if wait <= 0:
                self._waiters.discard(fut)
                with self._lock:
                    return self._take(queues, max_messages)
            if not await wait_future(fut, wait):
                self._waiters.discard(fut)
            if loop.time() >= deadline:
                with self._lock:
                    return self._take(queues, max_messages)

    def _next_due(self) -> float | None:
        candidates = []
        if self._scheduled:
            candidates.append(self._scheduled[0][0])
        if self._leases:
            candidates.append(self._leases[0][0])
        return min(candidates) if candidates else None

    def _take(self, queues: Sequence[str], limit: int) -> list[Delivery]:
        now = self.clock.time()
        self._promote(now)
        self._reclaim(now)
        out: list[Delivery] = []
        for name in queues:
            q = self._queues.get(name)
            if q is None or q.paused:
                continue
            while q.heap and len(out) < limit:
                _, seq, mid = heapq.heappop(q.heap)
                stored = self._messages.get(mid)
                if stored is None or stored.seq != seq or stored.state != "ready":
                    continue  # cancelled, purged or superseded: lazily skipped
                out.append(self._lease_out(stored, now))
            if len(out) >= limit:
                break
        return out

    def _lease_out(self, stored: _Stored, now: float) -> Delivery:
        stored.state = "inflight"
        stored.deliveries += 1
        stored.token = next(self._tokens)
        self._queue(stored.queue).size -= 1
        stored.deadline = now + self.lease
        heapq.heappush(self._leases, (stored.deadline, stored.token, stored.id))
        return MemoryDelivery(self, stored)

    def _promote(self, now: float) -> None:
        while self._scheduled and self._scheduled[0][0] <= now:
            _, seq, mid = heapq.heappop(self._scheduled)
            stored = self._messages.get(mid)
            if stored is not None and stored.seq == seq and stored.state == "scheduled":
                self._place(stored, None, now)

    def _reclaim(self, now: float) -> None:
        while self._leases and self._leases[0][0] <= now:
            _, token, mid = heapq.heappop(self._leases)
            stored = self._messages.get(mid)
            if stored is None or stored.state != "inflight" or stored.token != token:
                continue  # settled
            if stored.deadline > now:
                continue  # renewed: a later entry stands for the new deadline
            stored.token = 0
            if stored.deliveries >= stored.max_deliveries:
                self._bury(stored, "worker_lost", "lease expired", now)
                self._lost.append(self._dead[stored.queue][-1])
            else:
                self._queue(stored.queue).size += 1
                self._place(stored, None, now)

    # -- settling (called by MemoryDelivery) -----------------------------------------
    def _settle(self, mid: str, token: int, action: str, **kw: Any) -> bool:
        with self._lock:
            stored = self._messages.get(mid)
            if stored is None or stored.state != "inflight" or stored.token != token:
                return False
            now = self.clock.time()
            if action == "touch":
                stored.deadline = now + self.lease
                heapq.heappush(self._leases, (stored.deadline, token, mid))
                return True
            stored.token = 0
            if action == "ack":
                del self._messages[mid]
            elif action == "requeue":
                stored.deliveries -= 1
                self._queue(stored.queue).size += 1
                self._place(stored, None, now)
            elif action == "retry":
                stored.body = kw["body"]
                stored.deliveries = 0
                stored.max_deliveries = max(1, kw["max_deliveries"])
                self._queue(stored.queue).size += 1
                self._place(stored, now + max(0.0, kw["delay"]), now)
            else:
                self._bury(stored, kw["reason"], kw.get("error"), now)
        self._waiters.notify_all()
        return True

    def _bury(self, stored: _Stored, reason: str, error: str | None, now: float) -> None:
        self._messages.pop(stored.id, None)
        self._dead.setdefault(stored.queue, []).append(
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
        with self._lock:
            lost, self._lost = self._lost, []
        return lost

    async def cancel(self, message_id: str, queue: str) -> bool:
        """Remove a ready or scheduled message."""
        with self._lock:
            stored = self._messages.get(message_id)
            if stored is None or stored.state == "inflight" or stored.queue != queue:
                return False
            del self._messages[message_id]
            self._queue(stored.queue).size -= 1
            return True

    # -- control channel -------------------------------------------------------------
    async def send_control(self, command: dict[str, Any]) -> None:
        """Broadcast to every worker polling :meth:`control_messages`."""
        with self._lock:
            self._control.append(command)
            if len(self._control) > 10_000:
                del self._control[:5_000]
                for reader, cursor in list(self._control_cursors.items()):
                    self._control_cursors[reader] = max(0, cursor - 5_000)
        self._control_waiters.notify_all()

    async def control_messages(self, timeout: float) -> list[dict[str, Any]]:
        """Commands sent since this task's previous call."""
        key = _current_task()
        with self._lock:
            cursor = self._control_cursors.setdefault(key, len(self._control))
            if cursor < len(self._control) or timeout <= 0:
                self._control_cursors[key] = len(self._control)
                return self._control[cursor:]
            fut = self._control_waiters.register_async()
        if not await wait_future(fut, timeout):
            self._control_waiters.discard(fut)
        with self._lock:
            self._control_cursors[key] = len(self._control)
            return self._control[cursor:]

    def forget_control_reader(self) -> None:
        """Drop the current task's control cursor (called when a worker stops)."""
        with self._lock:
            self._control_cursors.pop(_current_task(), None)
