"""Admin operations of the Redis broker (depth, peek, purge, pause, dead letters).

Counting, purging and replaying are Lua (``admin.lua``) so they see one consistent state;
peek and the dead-letter listing are plain pipelined reads.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from redis.exceptions import RedisError

from ._redis_common import broker_error
from .base import DeadLetter, Message

if TYPE_CHECKING:
    import redis.asyncio as aioredis

__all__ = ["RedisAdmin"]


class RedisAdmin:
    """Mixin: the :class:`~taskflow.brokers.base.BrokerAdmin` methods on Redis."""

    _masked: str

    if TYPE_CHECKING:
        # Provided by RedisBroker; declared here so the mixin type-checks on its own.
        def key(self, *parts: str) -> str: ...
        def _client(self) -> aioredis.Redis: ...
        async def _run(self, script: str, args: Sequence[Any]) -> Any: ...

    async def depth(self, queue: str) -> dict[str, int]:
        """Counts of ``ready``, ``scheduled``, ``inflight`` and ``dead`` messages."""
        ready, sched, inflight, dead = await self._run("admin", ["depth", queue])
        return {"ready": ready, "scheduled": sched, "inflight": inflight, "dead": dead}

    async def peek(self, queue: str, limit: int = 10) -> list[bytes]:
        """Bodies of the next ready messages, in delivery order."""
        r = self._client()
        try:
            ids: list[Any] = await r.zrange(self.key("q", queue, "ready"), 0, max(0, limit - 1))
            async with r.pipeline(transaction=False) as pipe:
                for i in ids:
                    pipe.hget(self.key("m", i.decode()), "b")
                bodies: list[bytes | None] = await pipe.execute()
        except (RedisError, OSError) as exc:
            raise broker_error(self._masked, exc) from None
        return [b for b in bodies if b is not None]

    async def purge_ids(self, queue: str, *, scheduled: bool = True) -> list[str]:
        """Drop every ready (and scheduled) message of ``queue``; their ids."""
        ids = await self._run("admin", ["purge", queue, "1" if scheduled else "0"])
        return [_text(i) for i in ids]

    async def pause(self, queue: str) -> None:
        """Stop delivering from ``queue``; publishing still works."""
        try:
            await self._client().sadd(self.key("paused"), queue)
        except (RedisError, OSError) as exc:
            raise broker_error(self._masked, exc) from None

    async def resume(self, queue: str) -> None:
        """Deliver from ``queue`` again (and wake idle consumers)."""
        await self._run("admin", ["resume", queue])

    async def dead_letters(self, queue: str, limit: int = 100) -> list[DeadLetter]:
        """The dead-letter list of ``queue``, oldest first."""
        r = self._client()
        fields = ("b", "rs", "er", "ft", "dc", "p", "md", "st")
        try:
            ids: list[Any] = await r.lrange(self.key("q", queue, "dead"), 0, max(0, limit - 1))
            async with r.pipeline(transaction=False) as pipe:
                for i in ids:
                    # Raw bytes: a hand-written id need not be UTF-8 (it was dead-lettered
                    # as undecodable for that), and is shown escaped.
                    pipe.hmget(self.key("m", "").encode() + i, fields)
                rows = await pipe.execute()
        except (RedisError, OSError) as exc:
            raise broker_error(self._masked, exc) from None
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
