"""Admin operations of the Redis broker (depth, peek, purge, pause, dead letters).

Counting, purging and replaying are Lua (``admin.lua``) so they see one consistent state;
peek and the dead-letter listing are plain pipelined reads.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from redis.exceptions import RedisError

from .._redis.connection import Connection
from .base import BrokerAdmin, DeadLetter, Message

__all__ = ["RedisAdmin", "RunScript"]

RunScript = Callable[[str, Sequence[Any]], Awaitable[Any]]
"""``run(script, args)``: a broker script, given the prefix and the broker's time first."""


class RedisAdmin(BrokerAdmin):
    """The :class:`~taskflow.brokers.base.BrokerAdmin` methods on Redis."""

    def __init__(self, conn: Connection, run: RunScript) -> None:
        """Operator actions in ``conn``'s namespace; ``run`` runs the broker's scripts."""
        self._conn = conn
        self._run = run

    async def depth(self, queue: str) -> dict[str, int]:
        """Counts of ``ready``, ``scheduled``, ``inflight`` and ``dead`` messages."""
        ready, sched, inflight, dead = await self._run("admin", ["depth", queue])
        return {"ready": ready, "scheduled": sched, "inflight": inflight, "dead": dead}

    async def peek(self, queue: str, limit: int = 10) -> list[bytes]:
        """Bodies of the next ready messages, in delivery order."""
        conn = self._conn
        r = conn.client()
        try:
            ids: list[Any] = await r.zrange(conn.key("q", queue, "ready"), 0, max(0, limit - 1))
            async with r.pipeline(transaction=False) as pipe:
                for i in ids:
                    pipe.hget(conn.key("m", i.decode()), "b")
                bodies: list[bytes | None] = await pipe.execute()
        except (RedisError, OSError) as exc:
            raise conn.error(exc) from None
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
        conn = self._conn
        r = conn.client()
        fields = ("b", "rs", "er", "ft", "dc", "p", "md", "st")
        try:
            ids: list[Any] = await r.lrange(conn.key("q", queue, "dead"), 0, max(0, limit - 1))
            async with r.pipeline(transaction=False) as pipe:
                for i in ids:
                    # Raw bytes: a hand-written id need not be UTF-8 (it was dead-lettered
                    # as undecodable for that), and is shown escaped.
                    pipe.hmget(conn.key("m", "").encode() + i, fields)
                rows = await pipe.execute()
        except (RedisError, OSError) as exc:
            raise conn.error(exc) from None
        return [
            _dead_letter(i.decode(errors="backslashreplace"), queue, row)
            for i, row in zip(ids, rows, strict=True)
            if row[7] == b"d"
        ]

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
        return [_text(i) for i in await self._run("admin", args)]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _dead_letter(mid: str, queue: str, row: list[bytes | None]) -> DeadLetter:
    body, reason, error, failed_at, dc, pri, maxd, _ = row
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
