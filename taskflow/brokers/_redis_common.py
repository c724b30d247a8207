"""Helpers shared by the Redis broker and the Redis result store: client, scripts, errors."""

from __future__ import annotations

from importlib import resources

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import RedisError

from .._waiters import within
from ..errors import BrokerError, ConfigError

__all__ = ["broker_error", "check_prefix", "load_script", "redis_client"]


def load_script(name: str) -> str:
    """The text of a bundled Lua script (broker scripts get the shared helpers first)."""
    folder = resources.files("taskflow.brokers").joinpath("lua")
    text = folder.joinpath(f"{name}.lua").read_text(encoding="utf-8")
    if name.startswith("result_"):
        return text
    return folder.joinpath("common.lua").read_text(encoding="utf-8") + "\n" + text


def check_prefix(prefix: str, where: str) -> str:
    """A key prefix: non-empty, without braces (they would break the hash tag)."""
    if not isinstance(prefix, str) or not prefix or "{" in prefix or "}" in prefix:
        raise ConfigError(f"{where}: prefix must be a non-empty string without braces")
    return prefix


def redis_client(
    url: str, connect_timeout: float, socket_timeout: float | None, max_connections: int = 64
) -> aioredis.Redis:
    """An asyncio client that rides out a short outage (a server restart, a failover).

    A command on a broken connection is retried on a fresh one with backoff for about
    2.5 s in all, so a settle or a result write made while the server restarts still lands
    before the lease runs out; a server that stays down then fails with an error.
    Repeating a script is safe: publish replaces by id, settles are fenced by tokens,
    result updates are merges.
    The pool blocks (up to ``connect_timeout``) for a free connection instead of failing,
    so a burst of concurrent calls queues up rather than erroring.
    """
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=connect_timeout,
        socket_connect_timeout=connect_timeout,
        socket_timeout=socket_timeout,
        retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), 6),
        socket_keepalive=True,
    )
    return aioredis.Redis.from_pool(pool)


async def open_client(url: str, connect_timeout: float, masked: str) -> aioredis.Redis:
    """A connected :func:`redis_client`: the server answered a PING within the timeout,
    or :class:`BrokerError` naming ``masked``."""
    client = redis_client(url, connect_timeout, None)
    try:
        await within(client.ping(), connect_timeout)
    except (RedisError, OSError, TimeoutError) as exc:
        await client.aclose()
        raise broker_error(masked, exc) from None
    return client


def broker_error(masked: str, exc: BaseException) -> BrokerError:
    """A BrokerError naming the (masked) URL, never a bare client traceback."""
    what = "timed out" if isinstance(exc, TimeoutError) else str(exc) or type(exc).__name__
    return BrokerError(f"redis at {masked}: {what}")
