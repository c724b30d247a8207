"""The Redis broker's limiter: shared limits in the broker's Redis, one script call each.

Keys (``P`` is ``{prefix}``, the broker's hash-tagged prefix):

* ``P:limit:rate:<task>`` STRING: the GCRA theoretical arrival time (server seconds),
  expiring once it is in the past
* ``P:limit:conc:<task>`` ZSET of permit holders scored by their expiry (server seconds)

Every operation is ``limits.lua``, which reads the server's ``TIME``: workers whose clocks
disagree still share one limit.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib import resources
from typing import Any

from .._redis.connection import Connection
from .limits import ClusterLimiter

__all__ = ["RedisLimiter"]

_SOURCE = resources.files("taskflow._redis").joinpath("lua", "limits.lua").read_text("utf-8")


class RedisLimiter(ClusterLimiter):
    """Limits on the broker's connection (connect the broker first)."""

    def __init__(self, conn: Connection, lease: float) -> None:
        self.lease = lease
        self._conn = conn
        self._script: tuple[object, Any] | None = None

    async def _run(self, key: str, args: Sequence[Any]) -> Any:
        client = self._conn.client()
        if self._script is None or self._script[0] is not client:
            # Registered once per connection pool; redis-py loads it again if the server
            # forgot it (a restart, SCRIPT FLUSH).
            self._script = (client, client.register_script(_SOURCE))
        return await self._conn.call(self._script[1](keys=[key], args=list(args)))

    async def take_token(self, key: str, rate: float, burst: int) -> float:
        """GCRA on the server's clock."""
        interval = 1.0 / rate
        tolerance = (max(1, burst) - 1) * interval
        reply = await self._run(
            self._conn.key("limit", "rate", key), ["token", repr(interval), repr(tolerance)]
        )
        return float(reply)

    async def acquire(self, key: str, holder: str, limit: int) -> float:
        """A permit in the holders' ZSET, after dropping the expired ones."""
        reply = await self._run(
            self._conn.key("limit", "conc", key), ["acquire", holder, limit, repr(self.lease)]
        )
        return float(reply)

    async def renew(self, key: str, holders: Sequence[str]) -> list[bool]:
        """Extend the unexpired permits of ``holders``."""
        if not holders:
            return []
        reply = await self._run(
            self._conn.key("limit", "conc", key), ["renew", repr(self.lease), *holders]
        )
        return [bool(x) for x in reply]

    async def release(self, key: str, holder: str) -> None:
        """Remove ``holder`` from the holders' ZSET."""
        await self._run(self._conn.key("limit", "conc", key), ["release", holder])
