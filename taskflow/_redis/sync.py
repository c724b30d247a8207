"""One Lua script on a synchronous, thread-safe connection pool.

``delay()`` from a plain thread publishes through this instead of hopping onto the app's
event loop (a cross-thread hop costs more than the Redis round trip itself).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Sequence
from typing import Any

from redis import BlockingConnectionPool, Redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from .scripts import load_script

__all__ = ["SyncScript"]


class SyncScript:
    """The script ``name`` on its own synchronous pool, opened on the first call.

    Calls raise the client's errors (``RedisError``, ``OSError``); the caller maps them.
    The pool rides out a short outage like the asyncio one, and blocks (up to
    ``connect_timeout``) for a free connection.
    """

    def __init__(self, url: str, connect_timeout: float, name: str) -> None:
        """Nothing connects until the first call."""
        self._url = url
        self._timeout = connect_timeout
        self._name = name
        self._lock = threading.Lock()
        self._client: Redis | None = None
        self._script: Any = None

    def __call__(self, args: Sequence[Any]) -> Any:
        """Run the script with ``args`` (its ARGV); thread-safe."""
        script = self._script or self._open()
        return script(args=args)

    def _open(self) -> Any:
        with self._lock:
            if self._script is None:
                pool = BlockingConnectionPool.from_url(
                    self._url,
                    max_connections=64,
                    timeout=self._timeout,
                    socket_connect_timeout=self._timeout,
                    retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), 6),
                    socket_keepalive=True,
                )
                self._client = Redis.from_pool(pool)
                self._script = self._client.register_script(load_script(self._name))
            return self._script

    def close(self) -> None:
        """Close the pool (the next call opens a new one). Idempotent."""
        with self._lock:
            client, self._client, self._script = self._client, None, None
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()
