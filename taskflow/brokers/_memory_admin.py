"""Admin operations of the in-memory broker (depth, peek, purge, pause, dead letters)."""

from __future__ import annotations

from collections.abc import Sequence

from ._memory_state import MemoryState, Stored
from .base import BrokerAdmin, DeadLetter, Message, RecordClose, Waiting

__all__ = ["MemoryAdmin"]


class MemoryAdmin(BrokerAdmin):
    """The :class:`~taskflow.brokers.base.BrokerAdmin` methods over a broker's state.

    Every method holds the state's lock, like the broker's own methods.
    """

    admin_backend = "memory"
    dead_positions_shift = True

    def __init__(self, state: MemoryState) -> None:
        """Operator actions on ``state`` (the broker's, shared)."""
        self._state = state

    async def depth(self, queue: str) -> dict[str, int]:
        """Counts by state."""
        state = self._state
        with state.lock:
            state.catch_up()
            counts = {"ready": 0, "scheduled": 0, "inflight": 0}
            for stored in state.messages.values():
                if stored.queue == queue:
                    counts[stored.state] += 1
            counts["dead"] = len(state.dead.get(queue, ()))
            return counts

    async def peek(self, queue: str, limit: int = 10) -> list[bytes]:
        """Next ready bodies in delivery order."""
        state = self._state
        with state.lock:
            state.catch_up()
            q = state.queues.get(queue)
            if q is None:
                return []
            live = [e for e in sorted(q.heap) if self._is_live(e[2], e[1])]
            return [state.messages[e[2]].body for e in live[:limit]]

    def _is_live(self, mid: str, seq: int) -> bool:
        stored = self._state.messages.get(mid)
        return stored is not None and stored.seq == seq and stored.state == "ready"

    async def purge_ids(self, queue: str, *, scheduled: bool = True) -> list[str]:
        """Drop ready (and scheduled) messages; their ids."""
        state = self._state
        with state.lock:
            doomed = self._waiting(queue, scheduled)
            for stored in doomed:
                del state.messages[stored.id]
            q = state.queue(queue)
            q.size -= len(doomed)
            # Ready entries of this queue live in its heap, all now dropped; scheduled ones
            # left behind (with scheduled=False) are pushed there when due.
            q.heap.clear()
            return [stored.id for stored in doomed]

    async def purge_batch_closing(
        self, queue: str, *, scheduled: bool, limit: int, closing: RecordClose
    ) -> list[str]:
        """:meth:`purge_ids`, the records of the messages closed before any of them is
        dropped (``limit`` does not apply: one call drops them all). A ``close`` that fails
        leaves every message where it was; a message leased in between is not dropped,
        and its worker, finding its record closed, does not run it."""
        state = self._state
        with state.lock:
            listed = self._waiting(queue, scheduled)
        if not listed:
            return []
        await closing.close([stored.id for stored in listed])
        states = _purged_states(scheduled)
        with state.lock:
            q = state.queue(queue)
            dropped: list[str] = []
            for stored in listed:
                # Still this message (not published again under its id) and still waiting.
                if state.messages.get(stored.id) is stored and stored.state in states:
                    del state.messages[stored.id]  # its heap entry is skipped as stale
                    q.size -= 1
                    dropped.append(stored.id)
            return dropped

    def _waiting(self, queue: str, scheduled: bool) -> list[Stored]:
        """Under the state's lock: the messages of ``queue`` a purge drops, due ones
        counted as ready."""
        state = self._state
        state.promote(state.clock.time())
        states = _purged_states(scheduled)
        return [m for m in state.messages.values() if m.queue == queue and m.state in states]

    async def pause(self, queue: str) -> None:
        """Stop delivering from ``queue``."""
        state = self._state
        with state.lock:
            state.queue(queue).paused = True

    async def resume(self, queue: str) -> None:
        """Deliver again."""
        state = self._state
        with state.lock:
            state.queue(queue).paused = False
        state.waiters.notify_all()

    async def dead_letters(self, queue: str, limit: int = 100) -> list[DeadLetter]:
        """Oldest first."""
        state = self._state
        with state.lock:
            return list(state.dead.get(queue, ())[:limit])

    async def replay(self, queue: str, ids: Sequence[str] | None = None) -> int:
        """Publish dead letters again with a fresh delivery budget."""
        state = self._state
        with state.lock:
            dead = state.dead.get(queue, [])
            wanted = set(ids) if ids is not None else None
            chosen = [d for d in dead if wanted is None or d.id in wanted]
            # Publish before forgetting: a full queue raises and keeps every dead letter.
            state.insert(
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
            state.dead[queue] = [d for d in dead if id(d) not in picked]
        state.waiters.notify_all()
        return len(chosen)

    async def requeue(self, queue: str, messages: Sequence[Message]) -> list[str]:
        """Move dead letters back as ``messages`` (matched by id), each at most once."""
        state = self._state
        with state.lock:
            dead = state.dead.get(queue, [])
            by_id = {d.id: d for d in dead}
            # An id that is live again (sent anew after its dead letter) is not copied.
            chosen = [m for m in messages if m.id in by_id and m.id not in state.messages]
            chosen = list({m.id: m for m in chosen}.values())
            state.insert(
                [Message(m.id, queue, m.body, m.priority, None, m.max_deliveries) for m in chosen]
            )
            moved = {m.id for m in chosen}
            state.dead[queue] = [d for d in dead if d.id not in moved]
        if chosen:
            state.waiters.notify_all()
        return [m.id for m in chosen]

    async def known_queues(self) -> list[str]:
        """Declared queues and queues holding dead letters."""
        state = self._state
        with state.lock:
            return sorted(set(state.queues) | {q for q, d in state.dead.items() if d})

    async def paused_queues(self) -> set[str]:
        """Queues paused now."""
        state = self._state
        with state.lock:
            return {name for name, q in state.queues.items() if q.paused}

    async def browse(self, queue: str, state: str, offset: int, limit: int) -> list[Waiting]:
        """Ready messages in delivery order, scheduled ones by due time, or running ones."""
        st = self._state
        with st.lock:
            st.catch_up()
            if state == "ready":
                q = st.queues.get(queue)
                entries = sorted(q.heap) if q is not None else []
                chosen: list[tuple[float | None, Stored]] = [
                    (None, st.messages[e[2]]) for e in entries if self._is_live(e[2], e[1])
                ]
            elif state == "scheduled":
                chosen = [
                    (eta, st.messages[mid])
                    for eta, seq, mid in sorted(st.scheduled)
                    if (m := st.messages.get(mid)) is not None
                    and m.seq == seq
                    and m.state == "scheduled"
                    and m.queue == queue
                ]
            else:
                chosen = [
                    (None, m)
                    for m in st.messages.values()
                    if m.queue == queue and m.state == "inflight"
                ]
            return [
                Waiting(
                    m.id,
                    m.queue,
                    m.body,
                    state,
                    m.priority,
                    eta,
                    m.deliveries,
                    m.max_deliveries,
                )
                for eta, m in chosen[offset : offset + limit]
            ]

    async def dead_page(
        self, queue: str, position: int, limit: int
    ) -> tuple[list[tuple[int, DeadLetter]], int | None]:
        """By index in the dead-letter list."""
        state = self._state
        with state.lock:
            dead = state.dead.get(queue, [])
            page = dead[position : position + limit]
            end = position + len(page)
            return list(enumerate(page, position)), (end if end < len(dead) else None)

    async def dead_by_ids(self, queue: str, ids: Sequence[str]) -> list[DeadLetter]:
        """The dead letters with ``ids``."""
        wanted = set(ids)
        state = self._state
        with state.lock:
            return [d for d in state.dead.get(queue, []) if d.id in wanted]

    async def discard_dead(self, queue: str, ids: Sequence[str]) -> list[str]:
        """Forget these dead letters."""
        wanted = set(ids)
        state = self._state
        with state.lock:
            dead = state.dead.get(queue, [])
            gone = [d.id for d in dead if d.id in wanted]
            state.dead[queue] = [d for d in dead if d.id not in wanted]
            return gone

    async def add_dead(self, letters: Sequence[DeadLetter]) -> None:
        """Append ``letters`` to their queues' dead-letter lists."""
        state = self._state
        with state.lock:
            for letter in letters:
                state.queue(letter.queue)
                state.dead.setdefault(letter.queue, []).append(letter)

    async def present(self, queue: str, ids: Sequence[str]) -> set[str]:
        """Ids with a live message or a dead letter in ``queue``."""
        state = self._state
        with state.lock:
            dead = {d.id for d in state.dead.get(queue, [])}
            return {
                i
                for i in ids
                if i in dead or ((m := state.messages.get(i)) is not None and m.queue == queue)
            }


def _purged_states(scheduled: bool) -> tuple[str, ...]:
    """The states of the messages a purge drops."""
    return ("ready", "scheduled") if scheduled else ("ready",)
