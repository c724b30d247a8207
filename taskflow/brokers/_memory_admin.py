"""Admin operations of the in-memory broker (depth, peek, purge, pause, dead letters)."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING

from .base import DeadLetter, Message

if TYPE_CHECKING:
    from .._waiters import Waiters
    from ..clock import Clock
    from .memory import _Queue, _Stored

__all__ = ["MemoryAdmin"]


class MemoryAdmin:
    """Mixin: the :class:`~taskflow.brokers.base.BrokerAdmin` methods of MemoryBroker.

    Every method takes the broker's lock, like the broker's own methods.
    """

    clock: Clock
    _lock: threading.Lock
    _queues: dict[str, _Queue]
    _messages: dict[str, _Stored]
    _dead: dict[str, list[DeadLetter]]
    _waiters: Waiters

    if TYPE_CHECKING:
        # Provided by MemoryBroker; declared here so the mixin type-checks on its own.
        def _queue(self, name: str) -> _Queue: ...
        def _promote(self, now: float) -> None: ...
        def _reclaim(self, now: float) -> None: ...
        def _publish_locked(self, messages: Sequence[Message]) -> None: ...

    async def depth(self, queue: str) -> dict[str, int]:
        """Counts by state."""
        with self._lock:
            self._catch_up()
            counts = {"ready": 0, "scheduled": 0, "inflight": 0}
            for stored in self._messages.values():
                if stored.queue == queue:
                    counts[stored.state] += 1
            counts["dead"] = len(self._dead.get(queue, ()))
            return counts

    async def peek(self, queue: str, limit: int = 10) -> list[bytes]:
        """Next ready bodies in delivery order."""
        with self._lock:
            self._catch_up()
            q = self._queues.get(queue)
            if q is None:
                return []
            live = [e for e in sorted(q.heap) if self._is_live(e[2], e[1])]
            return [self._messages[e[2]].body for e in live[:limit]]

    def _is_live(self, mid: str, seq: int) -> bool:
        stored = self._messages.get(mid)
        return stored is not None and stored.seq == seq and stored.state == "ready"

    def _catch_up(self) -> None:
        """Release due messages and reclaim lost leases, as the next fetch would."""
        now = self.clock.time()
        self._promote(now)
        self._reclaim(now)

    async def purge_ids(self, queue: str, *, scheduled: bool = True) -> list[str]:
        """Drop ready (and scheduled) messages; their ids."""
        states = ("ready", "scheduled") if scheduled else ("ready",)
        with self._lock:
            self._promote(self.clock.time())  # a due message counts as ready
            doomed = [m for m in self._messages.values() if m.queue == queue and m.state in states]
            for stored in doomed:
                del self._messages[stored.id]
            q = self._queue(queue)
            q.size -= len(doomed)
            # Ready entries of this queue live in its heap, all now dropped; scheduled ones
            # left behind (with scheduled=False) are pushed there when due.
            q.heap.clear()
            return [stored.id for stored in doomed]

    async def pause(self, queue: str) -> None:
        """Stop delivering from ``queue``."""
        with self._lock:
            self._queue(queue).paused = True

    async def resume(self, queue: str) -> None:
        """Deliver again."""
        with self._lock:
            self._queue(queue).paused = False
        self._waiters.notify_all()

    async def dead_letters(self, queue: str, limit: int = 100) -> list[DeadLetter]:
        """Oldest first."""
        with self._lock:
            return list(self._dead.get(queue, ())[:limit])

    async def replay(self, queue: str, ids: Sequence[str] | None = None) -> int:
        """Publish dead letters again with a fresh delivery budget."""
        with self._lock:
            dead = self._dead.get(queue, [])
            wanted = set(ids) if ids is not None else None
            chosen = [d for d in dead if wanted is None or d.id in wanted]
            # Publish before forgetting: a full queue raises and keeps every dead letter.
            self._publish_locked(
                [
                    Message(
                        d.id,
                        d.queue,
                        d.body,
                        int(d.extra.get("priority", 0)),
                        None,
                        int(d.extra.get("max_deliveries", 1)),
                    )
                    for d in chosen
                ]
            )
            picked = {id(d) for d in chosen}
            self._dead[queue] = [d for d in dead if id(d) not in picked]
        self._waiters.notify_all()
        return len(chosen)

    async def requeue(self, queue: str, messages: Sequence[Message]) -> list[str]:
        """Move dead letters back as ``messages`` (matched by id), each at most once."""
        with self._lock:
            dead = self._dead.get(queue, [])
            by_id = {d.id: d for d in dead}
            # An id that is live again (sent anew after its dead letter) is not copied.
            chosen = [m for m in messages if m.id in by_id and m.id not in self._messages]
            chosen = list({m.id: m for m in chosen}.values())
            self._publish_locked(
                [Message(m.id, queue, m.body, m.priority, None, m.max_deliveries) for m in chosen]
            )
            moved = {m.id for m in chosen}
            self._dead[queue] = [d for d in dead if d.id not in moved]
        if chosen:
            self._waiters.notify_all()
        return [m.id for m in chosen]
