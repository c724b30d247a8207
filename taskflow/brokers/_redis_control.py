"""The Redis broker's control channel: one pub/sub subscription, a cursor per reader."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from .._redis.connection import broker_error

__all__ = ["ControlReader"]


class ControlReader:
    """One pub/sub subscription feeding per-task cursors (like the memory broker's)."""

    def __init__(self, client: aioredis.Redis, channel: str, masked: str) -> None:
        """A reader of ``channel``; it subscribes on the first read, not here."""
        self._client = client
        self._channel = channel
        self._masked = masked
        self._log: list[dict[str, Any]] = []
        self._base = 0  # absolute index of self._log[0]
        self._cursors: dict[int, int] = {}
        self._changed = asyncio.Event()
        self._pubsub: Any = None
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._releasing: set[asyncio.Task[None]] = set()

    async def _ensure(self) -> None:
        if self._task is not None and not self._task.done():
            return
        async with self._lock:  # concurrent first readers share one subscription
            if self._task is None or self._task.done():
                await self._subscribe()

    async def _subscribe(self) -> None:
        if self._pubsub is not None:
            with contextlib.suppress(Exception):
                await self._pubsub.aclose()
        pubsub: Any = self._client.pubsub()
        try:
            await pubsub.subscribe(self._channel)
            # Wait for the confirmation so a command sent after we return is not missed.
            async with asyncio.timeout(10.0):
                while True:
                    msg = await pubsub.get_message(timeout=1.0)
                    if msg is not None and msg.get("type") == "subscribe":
                        break
        except (RedisError, OSError, TimeoutError) as exc:
            await pubsub.aclose()
            raise broker_error(self._masked, exc) from None
        self._pubsub = pubsub
        self._task = asyncio.get_running_loop().create_task(self._listen(pubsub))

    async def _listen(self, pubsub: Any) -> None:
        try:
            async for msg in pubsub.listen():
                if msg.get("type") != "message":
                    continue
                with contextlib.suppress(orjson.JSONDecodeError):
                    command = orjson.loads(msg["data"])
                    if isinstance(command, dict):
                        self._append(command)
        except (RedisError, OSError):
            self._changed.set()  # readers return; the next read resubscribes

    def _append(self, command: dict[str, Any]) -> None:
        self._log.append(command)
        if len(self._log) > 10_000:
            del self._log[:5_000]
            self._base += 5_000
        self._changed.set()

    async def read(self, timeout: float) -> list[dict[str, Any]]:
        """Commands since the current task's previous read, waiting up to ``timeout``."""
        await self._ensure()
        key = id(asyncio.current_task())
        end = self._base + len(self._log)
        cursor = max(self._cursors.setdefault(key, end), self._base)
        if cursor == end and timeout > 0:
            self._changed.clear()
            # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancellation.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._changed.wait()
        end = self._base + len(self._log)
        self._cursors[key] = end
        return self._log[cursor - self._base :]

    def forget(self) -> None:
        """Drop the current task's cursor (no error outside a task). The last reader to
        leave ends the subscription: a stopped worker leaves no connection behind (the next
        read subscribes again)."""
        with contextlib.suppress(RuntimeError):
            self._cursors.pop(id(asyncio.current_task()), None)
            if not self._cursors and self._task is not None:
                self._release(asyncio.get_running_loop())

    def _release(self, loop: asyncio.AbstractEventLoop) -> None:
        """End the subscription in the background (:meth:`close` awaits it)."""
        task, self._task = self._task, None
        pubsub, self._pubsub = self._pubsub, None
        if task is not None:
            task.cancel()

        async def released() -> None:
            if task is not None:
                await asyncio.gather(task, return_exceptions=True)
            if pubsub is not None:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()

        closing = loop.create_task(released())
        self._releasing.add(closing)
        closing.add_done_callback(self._releasing.discard)

    async def close(self) -> None:
        """Stop listening and close the subscription (and any a last reader left)."""
        if self._task is not None or self._pubsub is not None:
            self._release(asyncio.get_running_loop())
        if self._releasing:
            await asyncio.gather(*self._releasing, return_exceptions=True)
