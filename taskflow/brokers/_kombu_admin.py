"""Operator actions of the AMQP broker, run on its I/O thread.

AMQP can count a queue's ready messages and purge a queue, but cannot look at or remove a
message in the middle of one. Looking (peek, cancel, purge of some messages, dead letters)
is therefore a *sweep*: every message of the queue is taken with ``basic.get`` and each is
either dropped (acked), or put back by publishing it again in the order taken, then acked.
Put-back messages keep their priority and relative order; a message published to the
queue while a sweep runs may end up before some of them. Scheduled messages are put back
through the delay cascade with what remains of their delay, so a sweep never delays them.

What AMQP cannot do: count the deliveries other processes hold (``inflight`` is this
process's own), page dead letters by a stable position, or import dead letters.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

from ..urls import mask_url
from . import _kombu_topology as topo
from ._kombu_io import IoThread, Raw
from .base import BrokerAdmin, DeadLetter, Message, RecordClose, Waiting, stopped_part_way

__all__ = ["KombuAdmin"]

Decide = Callable[[Raw], str]
"""``"keep"`` or ``"drop"`` for each message a sweep takes."""

_SWEEP_MAX = 100_000
_GROUP = 1_000
"""Messages a purge takes, closes the records of, then drops, at a time."""


def _sweep(
    io: IoThread,
    name: str,
    queue: str,
    decide: Decide,
    *,
    kind: str,
    dropped: list[str] | None = None,
) -> list[Raw]:
    """Take every message of the queue ``name`` (``kind``: ``work``, ``scheduled`` or
    ``dead``); put back those ``decide`` keeps (in order), drop the others; every message
    taken, in order. The ids of those dropped are added to ``dropped`` one by one, so that
    a caller knows them if the sweep fails part-way."""
    io.require()
    channel = io.conn.channel()
    taken: list[tuple[Raw, int]] = []
    try:
        for _ in range(_SWEEP_MAX):
            message = channel.basic_get(name, no_ack=False)
            if message is None:
                break
            raw = _raw(queue, message)
            taken.append((raw, int(message.delivery_info["delivery_tag"])))
        for raw, tag in taken:
            keep = decide(raw) == "keep"
            if keep:
                _put_back(io, name, queue, raw, kind)
            channel.basic_ack(tag)
            if not keep and dropped is not None:
                dropped.append(raw.id)
    finally:
        # Anything not acked (an error half-way) goes back to the queue with the channel.
        channel.close()
    return [raw for raw, _ in taken]


class _Taken:
    """Messages taken from one queue on a channel of their own and not acked yet: dropped
    all at once (:meth:`drop`), or handed back as they were by closing the channel."""

    def __init__(self, channel: Any) -> None:
        self.channel = channel
        self.raws: list[Raw] = []
        self.last_tag = 0

    def drop(self, io: IoThread) -> list[str]:
        """Ack them all (one ``basic.ack``), then close the channel; their ids."""
        try:
            if self.raws:
                self.channel.basic_ack(self.last_tag, multiple=True)
        finally:
            self.channel.close()
        return [raw.id for raw in self.raws]

    def give_back(self, io: IoThread) -> None:
        """Close the channel: RabbitMQ puts what it holds unacked back in its queue."""
        self.channel.close()


def _take(io: IoThread, name: str, queue: str, limit: int) -> _Taken | None:
    """Up to ``limit`` messages of the queue ``name`` taken and held unacked (None for a
    queue that is empty or does not exist)."""
    io.require()
    if not io.count(name):
        return None
    taken = _Taken(io.conn.channel())
    try:
        for _ in range(limit):
            message = taken.channel.basic_get(name, no_ack=False)
            if message is None:
                break
            taken.raws.append(_raw(queue, message))
            taken.last_tag = int(message.delivery_info["delivery_tag"])
    except BaseException:
        taken.channel.close()
        raise
    return taken


def _purged_parts(io: IoThread, queue: str, scheduled: bool) -> list[str]:
    """The AMQP queues a purge of ``queue`` sweeps, in order, once this process's consumer
    has handed back what it held: the work queue, and with ``scheduled`` the delay levels
    in the order messages move (see ``KombuAdmin.cancel``), then the work queue again."""
    io.declare_queue(queue)
    io.release(queue)
    names = [io.names.work(queue)]
    if scheduled:
        names += [io.names.level(queue, lv) for lv in io.levels(queue)]
        names.append(io.names.work(queue))
    return names


def _put_back(io: IoThread, name: str, queue: str, raw: Raw, kind: str) -> None:
    """Publish a message a sweep of ``name`` took and keeps again: a dead letter to the
    dead-letter queue as it was, a waiting one through ``queue``'s routing (a scheduled
    one with what is left of its delay)."""
    if kind == "dead":
        headers = {k: v for k, v in raw.headers.items() if not k.startswith("x-")}
        io.confirm(name, raw.body, 0, headers, raw.id)
        return
    due = None
    if kind == "scheduled":
        due = int(raw.headers.get(topo.H_DUE, 0) or 0) / 1000
    headers = {k: v for k, v in raw.headers.items() if k in _KEPT}
    io.send(queue, raw.id, raw.body, raw.priority, headers, due)


_KEPT = frozenset({topo.H_ID, topo.H_MAX, topo.H_COUNT, topo.H_TASK})


def _raw(queue: str, message: Any) -> Raw:
    body = message.body
    if isinstance(body, str):
        body = body.encode()
    props = message.properties
    return Raw(
        tag=0,
        gen=0,
        queue=queue,
        body=bytes(body),
        priority=int(props.get("priority") or 0),
        headers=dict(props.get("application_headers") or {}),
        redelivered=False,
    )


def _letter(queue: str, raw: Raw) -> DeadLetter:
    h = raw.headers
    error = h.get(topo.H_ERROR)
    return DeadLetter(
        id=raw.id,
        queue=queue,
        body=raw.body,
        reason=str(h.get(topo.H_REASON, "")),
        error=None if error is None else str(error),
        failed_at=float(h.get(topo.H_FAILED, 0.0) or 0.0),
        delivery_count=int(h.get(topo.H_COUNT, 0) or 0),
        extra={"priority": int(h.get(topo.H_PRIORITY, 0) or 0)},
    )


class KombuAdmin(BrokerAdmin):
    """The :class:`BrokerAdmin` side of :class:`~taskflow.brokers.kombu.KombuBroker`."""

    admin_backend: ClassVar[str] = "amqp"

    def __init__(self, io: IoThread, inflight: Callable[[str], int]) -> None:
        self._io = io
        self._inflight = inflight

    async def depth(self, queue: str) -> dict[str, int]:
        def count(io: IoThread) -> dict[str, int]:
            io.require()
            io.declare_queue(queue)
            levels = io.levels(queue)
            return {
                "ready": io.count(io.names.work(queue)) + io.held(queue),
                "scheduled": sum(io.count(io.names.level(queue, lv)) for lv in levels),
                "inflight": self._inflight(queue),
                "dead": io.count(io.names.dead(queue)),
            }

        return await self._io.call(count)

    async def peek(self, queue: str, limit: int = 10) -> list[bytes]:
        def look(io: IoThread) -> list[bytes]:
            io.declare_queue(queue)
            io.release(queue)
            taken = _sweep(io, io.names.work(queue), queue, lambda _r: "keep", kind="work")
            return [raw.body for raw in taken[:limit]]

        return await self._io.call(look)

    async def browse(self, queue: str, state: str, offset: int, limit: int) -> list[Waiting]:
        if state != "ready":
            raise self.unsupported(f"list {state} tasks")

        def look(io: IoThread) -> list[Waiting]:
            io.declare_queue(queue)
            io.release(queue)
            taken = _sweep(io, io.names.work(queue), queue, lambda _r: "keep", kind="work")
            return [
                Waiting(
                    id=raw.id,
                    queue=queue,
                    body=raw.body,
                    state="ready",
                    priority=raw.priority,
                    delivery_count=int(raw.headers.get(topo.H_COUNT, 0) or 0),
                    max_deliveries=int(raw.headers.get(topo.H_MAX, 1) or 1),
                )
                for raw in taken[offset : offset + limit]
            ]

        return await self._io.call(look)

    async def purge_ids(self, queue: str, *, scheduled: bool = True) -> list[str]:
        """Sweep the queue's parts, dropping every message (a failure after the first
        drop raises :class:`StoppedPartWay` with those dropped)."""
        ids: list[str] = []  # filled on the I/O thread, read here after its answer

        def purge(io: IoThread) -> list[str]:
            for name in _purged_parts(io, queue, scheduled):
                if io.count(name):
                    _sweep(io, name, queue, lambda _r: "drop", kind="work", dropped=ids)
            return ids

        with stopped_part_way(ids):
            return await self._io.call(purge)

    async def purge_batch_closing(
        self, queue: str, *, scheduled: bool, limit: int, closing: RecordClose
    ) -> list[str]:
        """:meth:`purge_ids`, in groups of up to :data:`_GROUP` messages taken and held
        unacked while ``closing.close`` closes their records, then dropped: a group whose
        ``close`` fails goes back to its queue as it was, and a drop that fails leaves
        messages whose records say they finished, which workers settle without running
        (``limit`` does not apply: one call drops them all)."""
        ids: list[str] = []
        parts = functools.partial(_purged_parts, queue=queue, scheduled=scheduled)
        with stopped_part_way(ids):
            for name in await self._io.call(parts):
                take = functools.partial(_take, name=name, queue=queue, limit=_GROUP)
                for _ in range(0, _SWEEP_MAX, _GROUP):
                    taken = await self._io.call(take, orphan=self._give_back)
                    if taken is None:
                        break
                    try:
                        await closing.close([raw.id for raw in taken.raws])
                    except BaseException:
                        await self._io.call(taken.give_back)
                        raise
                    ids += await self._io.call(taken.drop)
                    if len(taken.raws) < _GROUP:
                        break
        return ids

    def _give_back(self, taken: _Taken | None) -> None:
        """On the loop: a group taken for a purge cancelled meanwhile goes back (on the
        I/O thread, which owns its channel)."""
        if taken is not None:
            self._io.post(asyncio.get_running_loop(), taken.give_back, lambda _r, _e: None)

    async def alarms(self) -> list[str]:
        """A resource alarm that blocks publishing, if the server has told this process's
        connection of one (``connection.blocked``: RabbitMQ tells the connections that
        publish, so a process that has sent nothing may not know)."""
        blocked = self._io.blocked
        if blocked is None:
            return []
        return [
            f"rabbitmq at {mask_url(self._io.shown)}: the server blocks publishing "
            f"({blocked}, a resource alarm): every send fails until it clears"
        ]

    async def cancel(self, message_id: str, queue: str) -> bool:
        """Remove one ready or scheduled message by id (a sweep of its queue's parts)."""

        def cancel(io: IoThread) -> bool:
            io.declare_queue(queue)
            io.release(queue)
            found = False

            def decide(raw: Raw) -> str:
                nonlocal found
                if raw.id == message_id and not found:
                    found = True
                    return "drop"
                return "keep"

            work = io.names.work(queue)
            if io.count(work):
                _sweep(io, work, queue, decide, kind="work")
            # A scheduled message moves down its levels and into the work queue as it
            # comes due, maybe while this sweep runs: the levels come in that order
            # (IoThread.levels) and the work queue once more at the end, so that a message
            # on the move is met further on.
            for level in io.levels(queue):
                if found:
                    break
                name = io.names.level(queue, level)
                if io.count(name):
                    _sweep(io, name, queue, decide, kind="scheduled")
            if not found and io.count(work):
                _sweep(io, work, queue, decide, kind="work")
            return found

        return await self._io.call(cancel)

    async def pause(self, queue: str) -> None:
        await self._io.call(lambda io: _set_paused(io, queue, True))

    async def resume(self, queue: str) -> None:
        await self._io.call(lambda io: _set_paused(io, queue, False))

    async def paused_queues(self) -> set[str]:
        raise self.unsupported("list paused queues (AMQP cannot list queues)")

    async def paused_of(self, queues: Sequence[str]) -> set[str]:
        def look(io: IoThread) -> set[str]:
            io.require()
            return {q for q in queues if io.exists(io.names.paused_marker(q))}

        return await self._io.call(look)

    async def has_queue(self, queue: str) -> bool:
        # A passive declare of its work queue: what a send or a worker declares first.
        def look(io: IoThread) -> bool:
            io.require()
            return io.exists(io.names.work(queue))

        return await self._io.call(look)

    async def dead_letters(self, queue: str, limit: int = 100) -> list[DeadLetter]:
        def look(io: IoThread) -> list[DeadLetter]:
            io.declare_queue(queue)
            taken = _sweep(io, io.names.dead(queue), queue, lambda _r: "keep", kind="dead")
            return [_letter(queue, raw) for raw in taken[:limit]]

        return await self._io.call(look)

    async def dead_page(
        self, queue: str, position: int, limit: int
    ) -> tuple[list[tuple[int, DeadLetter]], int | None]:
        # AMQP reads a queue only from its head: each page is a sweep of the whole dead
        # queue (up to _SWEEP_MAX), taken and put back in order.
        letters = await self.dead_letters(queue, _SWEEP_MAX)
        end = position + limit
        page = list(enumerate(letters[position:end], position))
        return page, end if end < len(letters) else None

    async def dead_by_ids(self, queue: str, ids: Sequence[str]) -> list[DeadLetter]:
        wanted = set(ids)
        return [d for d in await self.dead_letters(queue, _SWEEP_MAX) if d.id in wanted]

    async def discard_dead(self, queue: str, ids: Sequence[str]) -> list[str]:
        wanted = set(ids)
        gone: list[str] = []  # filled on the I/O thread, read here after its answer

        def discard(io: IoThread) -> list[str]:
            io.declare_queue(queue)
            _sweep(
                io,
                io.names.dead(queue),
                queue,
                lambda r: "drop" if r.id in wanted else "keep",
                kind="dead",
                dropped=gone,
            )
            return gone

        with stopped_part_way(gone):
            return await self._io.call(discard)

    async def replay(self, queue: str, ids: Sequence[str] | None = None) -> int:
        wanted = None if ids is None else set(ids)

        def replay(io: IoThread) -> int:
            io.declare_queue(queue)
            moved: list[str] = []

            def decide(raw: Raw) -> str:
                if wanted is not None and raw.id not in wanted:
                    return "keep"
                # Published before the dead letter is acked: a crash keeps one of them.
                # A fresh start: the x-death and dead-letter headers are left behind.
                headers: dict[str, Any] = {
                    topo.H_MAX: raw.headers.get(topo.H_MAX, 1),
                    topo.H_COUNT: 0,
                }
                if raw.headers.get(topo.H_TASK):
                    headers[topo.H_TASK] = raw.headers[topo.H_TASK]
                priority = int(raw.headers.get(topo.H_PRIORITY, 0) or 0)
                io.send(queue, raw.id, raw.body, priority, headers)
                moved.append(raw.id)
                return "drop"

            _sweep(io, io.names.dead(queue), queue, decide, kind="dead")
            return len(moved)

        return await self._io.call(replay)

    async def requeue(self, queue: str, messages: Sequence[Message]) -> list[str]:
        """Move dead letters back one at a time (send, then ack the dead letter): a
        failure after the first raises :class:`StoppedPartWay` with those sent; the
        message under way keeps its dead letter."""
        by_id = {m.id: m for m in messages}
        moved: list[str] = []  # filled on the I/O thread, read here after its answer

        def requeue(io: IoThread) -> list[str]:
            io.declare_queue(queue)

            def decide(raw: Raw) -> str:
                m = by_id.get(raw.id)
                if m is None or m.id in moved:
                    return "keep"
                headers: dict[str, Any] = {topo.H_MAX: m.max_deliveries, topo.H_COUNT: 0}
                if m.task:
                    headers[topo.H_TASK] = m.task
                io.send(queue, m.id, m.body, m.priority, headers)
                moved.append(m.id)
                return "drop"

            _sweep(io, io.names.dead(queue), queue, decide, kind="dead")
            return moved

        with stopped_part_way(moved):
            return await self._io.call(requeue)

    async def known_queues(self) -> list[str]:
        raise self.unsupported("list its queues (AMQP has no queue listing)")


def _set_paused(io: IoThread, queue: str, paused: bool) -> None:
    """Record the pause in a marker queue (new workers see it) and tell every running
    broker instance on the control exchange."""
    import orjson

    io.require()
    marker = io.names.paused_marker(queue)
    if paused:
        io.work.queue_declare(marker, durable=True, auto_delete=False)
        io.state.paused.add(queue)
    else:
        io.work.queue_delete(marker)
        io.state.paused.discard(queue)
    io.send_control(orjson.dumps({"tf-pause": queue, "paused": paused}))
    if not paused:
        io.wake_waiters()
    io.sync_consumers()
