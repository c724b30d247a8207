"""Worker heartbeats and the audit trail on Redis (for :class:`.redis.RedisResultStore`).

Keys (``P`` is the store's ``{prefix}`` hash tag):

* ``P:worker:<id>``  STRING, the heartbeat as JSON, with a TTL of its retention.
* ``P:workers``      ZSET of worker ids scored by the logical expiry (epoch seconds on the
  store's clock), so a test clock and Redis agree; expired members are dropped on writes.
* ``P:audit``        ZSET of audit entries scored by their ``at``; each member is JSON
  ``{"w": write time and nonce, "e": entry, "x": expiry}`` (``w`` keeps equal entries apart
  and orders entries of equal ``at`` by writing). Writes trim it by age (``at`` older than
  the retention) and to the newest :data:`AUDIT_MAX` entries.

Both sorted sets carry a TTL that only ever grows (``PEXPIRE NX`` then ``GT``), so the keys
of an app that stops writing go away on their own.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import orjson

from .._redis.connection import Connection

__all__ = ["AUDIT_MAX", "add_audit", "audit", "put_worker", "remove_worker", "workers"]

AUDIT_MAX = 10_000
"""Audit entries kept at most, whatever their retention."""

Key = Callable[..., str]


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


def _keep(pipe: Any, key: str, ms: int) -> None:
    # Set a TTL on a fresh key, else only lengthen it: another writer's longer retention wins.
    pipe.pexpire(key, ms, nx=True)
    pipe.pexpire(key, ms, gt=True)


async def put_worker(
    conn: Connection, key: Key, now: float, info: dict[str, Any], retention: float
) -> None:
    """Upsert ``info`` under its id, live until ``now + retention``."""
    worker_id = str(info["id"])
    index = key("workers")
    async with conn.client().pipeline(transaction=True) as pipe:
        pipe.set(key("worker", worker_id), orjson.dumps(info), px=_ms(retention))
        pipe.zadd(index, {worker_id: now + retention})
        pipe.zremrangebyscore(index, "-inf", now)
        _keep(pipe, index, _ms(retention))
        await conn.call(pipe.execute())


async def remove_worker(conn: Connection, key: Key, worker_id: str) -> None:
    """Delete a worker's entry and its place in the index."""
    async with conn.client().pipeline(transaction=True) as pipe:
        pipe.delete(key("worker", worker_id))
        pipe.zrem(key("workers"), worker_id)
        await conn.call(pipe.execute())


async def workers(conn: Connection, key: Key, now: float) -> list[dict[str, Any]]:
    """The entries whose logical expiry is after ``now``, by id."""
    client = conn.client()
    ids = await conn.call(client.zrangebyscore(key("workers"), f"({now!r}", "+inf"))
    if not ids:
        return []
    names = sorted(raw.decode() for raw in ids)
    values = await conn.call(client.mget([key("worker", name) for name in names]))
    return [orjson.loads(value) for value in values if value]


async def add_audit(
    conn: Connection, key: Key, now: float, entry: dict[str, Any], retention: float
) -> None:
    """Append ``entry``, live until ``now + retention``; trim by age and count."""
    index = key("audit")
    # Members of equal score sort by their bytes: the write time first keeps them in order.
    stamp = f"{max(0, int(now * 1_000_000)):020d}{uuid.uuid4().hex[:8]}"
    member = orjson.dumps({"w": stamp, "e": entry, "x": now + retention})
    async with conn.client().pipeline(transaction=True) as pipe:
        pipe.zadd(index, {member: float(entry.get("at") or now)})
        pipe.zremrangebyscore(index, "-inf", f"({now - retention!r}")
        pipe.zremrangebyrank(index, 0, -(AUDIT_MAX + 1))
        _keep(pipe, index, _ms(retention))
        await conn.call(pipe.execute())


async def audit(conn: Connection, key: Key, now: float, limit: int) -> list[dict[str, Any]]:
    """Up to ``limit`` live entries, newest first."""
    if limit <= 0:
        return []
    rows = await conn.call(
        conn.client().zrevrangebyscore(key("audit"), "+inf", "-inf", start=0, num=limit)
    )
    out: list[dict[str, Any]] = []
    for raw in rows:
        stored = orjson.loads(raw)
        if float(stored.get("x") or 0.0) > now:
            out.append(stored["e"])
    return out
