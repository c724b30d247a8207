"""Redis backends for the contract suites: each test gets its own key prefix on the shared
server, and closing the backend deletes every key under that prefix."""

from __future__ import annotations

import uuid
from typing import Any

from taskflow.brokers.redis import RedisBroker
from taskflow.clock import Clock
from taskflow.results.redis import RedisResultStore
from tests.conftest import require_service

URL = "redis://127.0.0.1:6379/0"


async def _delete_prefix(backend: Any) -> None:
    if not backend._conn.connected:
        return
    client = backend._conn.client()
    async for key in client.scan_iter(match=f"{{{backend.prefix}}}:*", count=1000):
        await client.delete(key)


class _CleanRedisBroker(RedisBroker):
    """A RedisBroker that removes its keys when closed."""

    async def close(self) -> None:
        await _delete_prefix(self)
        await super().close()


class _CleanRedisResultStore(RedisResultStore):
    """A RedisResultStore that removes its keys when closed."""

    async def close(self) -> None:
        await _delete_prefix(self)
        await super().close()


def _prefix() -> str:
    return f"tftest{uuid.uuid4().hex[:12]}"


async def redis_broker(clock: Clock | None, lease: float) -> RedisBroker:
    """An unconnected broker on a fresh prefix."""
    require_service("redis", "127.0.0.1", 6379)
    return _CleanRedisBroker(URL, prefix=_prefix(), lease=lease, clock=clock)


async def redis_store(clock: Clock | None) -> RedisResultStore:
    """An unconnected result store on a fresh prefix."""
    require_service("redis", "127.0.0.1", 6379)
    return _CleanRedisResultStore(URL, prefix=_prefix(), clock=clock)


def register(brokers: dict[str, Any], stores: dict[str, Any]) -> None:
    """Add the redis factories to the contract suites' registries."""
    brokers["redis"] = redis_broker
    stores["redis"] = redis_store
