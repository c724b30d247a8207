"""Admin operations of the Redis broker (depth, peek, purge, pause, dead letters).

Counting, purging and replaying are Lua (``admin.lua``) so they see one consistent state;
peek and the dead-letter listing are plain pipelined reads. Every call, script or read, is
bounded like a single command (``Connection.call``, ``Connection.ask``): an operator's
action on a server that stopped answering raises BrokerError after ``CALL_TIMEOUT``
instead of waiting for good. A script cut short that way may or may not have run. The one
exception is :meth:`RedisAdmin.requeue`, whose answer a replay needs (see there).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from .._redis.connection import Connection, RecordKeys
from ..errors import BrokerError
from .base import ALARM_SHARE, BrokerAdmin, DeadLetter, Message, RecordClose, Waiting

__all__ = ["RedisAdmin", "RunScript"]

RunScript = Callable[[str, Sequence[Any]], Awaitable[Any]]
"""``run(script, args)``: a broker script, given the prefix and the broker's time first."""


class RedisAdmin(BrokerAdmin):
    """The :class:`~taskflow.brokers.base.BrokerAdmin` methods on Redis."""

    admin_backend = "redis"
    dead_positions_shift = True

    def __init__(
        self,
        conn: Connection,
        run: RunScript,
        wait: RunScript,
        linked: Callable[[], RecordKeys | None],
    ) -> None:
        """Operator actions in ``conn``'s namespace; ``run`` runs the broker's scripts
        within ``CALL_TIMEOUT``, ``wait`` without a bound (:meth:`requeue` only);
        ``linked()`` is the result store the broker was linked to, if any
        (``RedisBroker.link_records``)."""
        self._conn = conn
        self._run = run
        self._wait = wait
        self._linked = linked

    async def alarms(self) -> list[str]:
        """From the server's ``INFO`` (two sections, one round trip): memory at
        ``ALARM_SHARE`` of its ``maxmemory`` or more (full, it refuses new tasks and
        workers stall), a ``maxmemory-policy`` that deletes keys when full (tasks would
        vanish), and a failed background save (after one, Redis with save points refuses
        every write by default). A server that does not let ``INFO`` be read reports
        nothing."""
        conn = self._conn
        try:
            async with conn.client().pipeline(transaction=False) as pipe:
                pipe.info("memory")
                pipe.info("persistence")
                memory, persistence = await conn.call(pipe.execute())
        except BrokerError:
            return []
        where = f"redis at {conn.masked}"
        out: list[str] = []
        used, limit = int(memory.get("used_memory", 0)), int(memory.get("maxmemory", 0))
        policy = str(memory.get("maxmemory_policy", "noeviction"))
        if limit and policy != "noeviction":
            out.append(
                f"{where}: its maxmemory-policy is {policy}: once full ({used:,} of "
                f"{limit:,} bytes used now) it deletes keys, and queued tasks and their "
                f"records vanish; set it to noeviction"
            )
        elif limit and used >= ALARM_SHARE * limit:
            out.append(
                f"{where}: {min(used / limit, 1.0):.0%} of its maxmemory in use ({used:,} of "
                f"{limit:,} bytes); full, it refuses new tasks and workers stall until it "
                f"has room"
            )
        if persistence.get("rdb_last_bgsave_status") == "err":
            out.append(
                f"{where}: its last background save failed; with save points set and "
                f"stop-writes-on-bgsave-error on (Redis's defaults) it refuses every write "
                f"until a save succeeds"
            )
        return out

    async def depth(self, queue: str) -> dict[str, int]:
        """Counts of ``ready``, ``scheduled``, ``inflight`` and ``dead`` messages."""
        ready, sched, inflight, dead = await self._run("admin", ["depth", queue])
        return {"ready": ready, "scheduled": sched, "inflight": inflight, "dead": dead}

    async def peek(self, queue: str, limit: int = 10) -> list[bytes]:
        """Bodies of the next ready messages, in delivery order."""
        conn = self._conn
        r = conn.client()
        ids: list[Any] = await conn.call(
            r.zrange(conn.key("q", queue, "ready"), 0, max(0, limit - 1))
        )
        async with r.pipeline(transaction=False) as pipe:
            for i in ids:
                pipe.hget(conn.key("m", i.decode()), "b")
            bodies: list[bytes | None] = await conn.call(pipe.execute())
        return [b for b in bodies if b is not None]

    async def purge_ids(self, queue: str, *, scheduled: bool = True) -> list[str]:
        """Drop every ready (and scheduled) message of ``queue``; their ids."""
        ids = await self._run("admin", ["purge", queue, "1" if scheduled else "0"])
        return [_text(i) for i in ids]

    async def pause(self, queue: str) -> None:
        """Stop delivering from ``queue``; publishing still works."""
        conn = self._conn
        await conn.call(conn.client().sadd(conn.key("paused"), queue))

    async def resume(self, queue: str) -> None:
        """Deliver from ``queue`` again (and wake idle consumers)."""
        await self._run("admin", ["resume", queue])

    async def dead_letters(self, queue: str, limit: int = 100) -> list[DeadLetter]:
        """The dead-letter list of ``queue``, oldest first."""
        page, _ = await self.dead_page(queue, 0, limit)
        return [letter for _, letter in page]

    async def dead_page(
        self, queue: str, position: int, limit: int
    ) -> tuple[list[tuple[int, DeadLetter]], int | None]:
        """A window of the dead-letter list (LRANGE by index), oldest first."""
        conn = self._conn
        r = conn.client()
        key = conn.key("q", queue, "dead")
        async with r.pipeline(transaction=False) as pipe:
            pipe.lrange(key, position, position + max(1, limit) - 1)
            pipe.llen(key)
            ids, total = await conn.call(pipe.execute())
        rows = await self._dead_rows(queue, ids)
        end = position + len(ids)
        page = [(position + i, letter) for i, letter in rows]
        return page, (end if end < int(total) else None)

    async def _dead_rows(self, queue: str, ids: Sequence[bytes]) -> list[tuple[int, DeadLetter]]:
        conn = self._conn
        fields = ("b", "rs", "er", "ft", "dc", "p", "md", "st", "q")
        async with conn.client().pipeline(transaction=False) as pipe:
            for i in ids:
                # Raw bytes: a hand-written id need not be UTF-8 (it was dead-lettered as
                # undecodable for that), and is shown escaped.
                pipe.hmget(conn.key("m", "").encode() + i, fields)
            rows = await conn.call(pipe.execute())
        return [
            (n, _dead_letter(i.decode(errors="backslashreplace"), queue, row))
            for n, (i, row) in enumerate(zip(ids, rows, strict=True))
            if row[7] == b"d" and row[8] == queue.encode()
        ]

    async def dead_by_ids(self, queue: str, ids: Sequence[str]) -> list[DeadLetter]:
        """The dead letters with ``ids`` (one pipelined read)."""
        rows = await self._dead_rows(queue, [i.encode() for i in dict.fromkeys(ids)])
        return [letter for _, letter in rows]

    async def discard_dead(self, queue: str, ids: Sequence[str]) -> list[str]:
        """Delete these dead letters (one script)."""
        if not ids:
            return []
        return [_text(i) for i in await self._run("admin", ["discard", queue, *ids])]

    async def add_dead(self, letters: Sequence[DeadLetter]) -> None:
        """File ``letters`` (one script per queue)."""
        by_queue: dict[str, list[Any]] = {}
        for d in letters:
            by_queue.setdefault(d.queue, []).extend(
                [
                    d.id,
                    d.body,
                    d.reason,
                    d.error or "",
                    repr(float(d.failed_at)),
                    d.delivery_count,
                    int(d.extra.get("priority", 0)),
                    int(d.extra.get("max_deliveries", 1)),
                ]
            )
        for queue, args in by_queue.items():
            await self._run("admin", ["bury", queue, *args])

    async def present(self, queue: str, ids: Sequence[str]) -> set[str]:
        """Ids whose message (waiting, running or dead) belongs to ``queue``."""
        conn = self._conn
        async with conn.client().pipeline(transaction=False) as pipe:
            for i in ids:
                pipe.hget(conn.key("m", i), "q")
            owners = await conn.call(pipe.execute())
        return {i for i, q in zip(ids, owners, strict=True) if q == queue.encode()}

    async def known_queues(self) -> list[str]:
        """Queues declared on this prefix (plus any with a bound or a pause flag)."""
        conn = self._conn
        async with conn.client().pipeline(transaction=False) as pipe:
            pipe.smembers(conn.key("queues"))
            pipe.hkeys(conn.key("limits"))
            pipe.smembers(conn.key("paused"))
            replies = await conn.call(pipe.execute())
        return sorted({_text(q) for reply in replies for q in reply})

    async def paused_queues(self) -> set[str]:
        """Queues paused now."""
        conn = self._conn
        return {_text(q) for q in await conn.call(conn.client().smembers(conn.key("paused")))}

    async def depths(self, queues: Sequence[str]) -> list[dict[str, int]]:
        """Counts of each queue (the scripts run concurrently)."""
        return list(await asyncio.gather(*(self.depth(q) for q in queues)))

    async def browse(self, queue: str, state: str, offset: int, limit: int) -> list[Waiting]:
        """A ZRANGE window of the ready, scheduled or in-flight set, then the messages."""
        conn = self._conn
        kind = {"ready": "ready", "scheduled": "sched", "running": "inflight"}[state]
        r = conn.client()
        window: list[Any] = await conn.call(
            r.zrange(
                conn.key("q", queue, kind), offset, offset + max(1, limit) - 1, withscores=True
            )
        )
        async with r.pipeline(transaction=False) as pipe:
            for mid, _ in window:
                pipe.hmget(conn.key("m", "").encode() + mid, ("b", "p", "dc", "md"))
            rows = await conn.call(pipe.execute())
        return [
            Waiting(
                mid.decode(errors="backslashreplace"),
                queue,
                row[0],
                state,
                int(row[1] or 0),
                score if state == "scheduled" else None,
                int(row[2] or 0),
                int(row[3] or 1),
            )
            for (mid, score), row in zip(window, rows, strict=True)
            if row[0] is not None
        ]

    async def purge_batch(self, queue: str, *, scheduled: bool, limit: int) -> list[str]:
        """Drop up to ``limit`` ready (and scheduled) messages; their ids."""
        ids = await self._run("admin", ["purge_batch", queue, "1" if scheduled else "0", limit])
        return [_text(i) for i in ids]

    async def purge_batch_closing(
        self, queue: str, *, scheduled: bool, limit: int, closing: RecordClose
    ) -> list[str]:
        """:meth:`purge_batch`; with a linked result store, the script that drops the
        messages writes ``closing.changes`` to their records. Otherwise (a store
        elsewhere) up to ``limit`` are listed, their records closed, and then those still
        waiting dropped: a ``close`` that fails drops nothing, and a message leased in
        between stays, its worker finding its record closed."""
        linked = self._linked()
        flag = "1" if scheduled else "0"
        if linked is None:
            listed = [
                _text(i) for i in await self._run("admin", ["purge_list", queue, flag, limit])
            ]
            if not listed:
                return []
            await closing.close(listed)
            dropped = await self._run("admin", ["purge_listed", queue, flag, *listed])
            return [_text(i) for i in dropped]
        # The store's own encoding of the update, for an empty id: the script appends
        # each dropped id to the record key and the done channel.
        record = linked.update_args("", closing.changes, closing.ttl)
        args = ["purge_batch", queue, flag, limit, *record]
        return [_text(i) for i in await self._run("admin", args)]

    async def replay(self, queue: str, ids: Sequence[str] | None = None) -> int:
        """Make dead letters ready again with a fresh delivery budget."""
        return int(await self._run("admin", ["replay", queue, *(ids or ())]))

    async def requeue(self, queue: str, messages: Sequence[Message]) -> list[str]:
        """Move dead letters back as ``messages`` (one script: each id moves at most once)."""
        if not messages:
            return []
        args: list[Any] = ["requeue", queue]
        for m in messages:
            args += [m.id, m.body, m.priority, m.max_deliveries]
        # Not bounded: the replay that sends these undoes its record restarts if this
        # fails, and undoing them for messages a slow server moved after all would leave
        # live messages with finished records, which workers settle without running. The
        # answer is waited for (operations.md, "A server stopped answering").
        return [_text(i) for i in await self._wait("admin", args)]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _dead_letter(mid: str, queue: str, row: list[bytes | None]) -> DeadLetter:
    body, reason, error, failed_at, dc, pri, maxd = row[:7]
    return DeadLetter(
        id=mid,
        queue=queue,
        body=body or b"",
        reason=(reason or b"").decode(),
        error=(error or b"").decode() or None,
        failed_at=float(failed_at or 0),
        delivery_count=int(dc or 0),
        extra={"priority": int(pri or 0), "max_deliveries": int(maxd or 1)},
    )
