"""Push-based waiting for the Redis result store: one shared pub/sub connection.

A terminal update publishes on ``P:done:<id>``; every waiter of a store subscribes through
one connection here, so many concurrent waits cost subscriptions, not sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from .._redis.connection import broker_error
from .._waiters import within

__all__ = ["DoneListener"]

_CONFIRM_TIMEOUT = 10.0
"""Seconds a subscription waits for the server's confirmation (BrokerError after)."""


class DoneListener:
    """One pub/sub connection shared by every waiter of a store."""

    def __init__(self, client: aioredis.Redis, masked: str) -> None:
        """A listener on ``client``'s pool; it subscribes on the first watch."""
        self._client = client
        self._masked = masked
        self._pubsub: Any = None
        self._task: asyncio.Task[None] | None = None
        self._waiters: dict[bytes, list[asyncio.Future[None]]] = {}
        self._confirm: dict[bytes, asyncio.Future[None]] = {}

    async def watch(self, channel: bytes) -> asyncio.Future[None]:
        """A future resolved by the next notice on ``channel`` (subscribed on return)."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiters = self._waiters.get(channel)
        if waiters is not None:
            waiters.append(fut)
            confirm = self._confirm.get(channel)
            if confirm is not None:
                await asyncio.shield(confirm)
            return fut
        self._waiters[channel] = [fut]
        confirm = self._confirm[channel] = asyncio.get_running_loop().create_future()
        try:
            await self._subscribe(channel)
            try:
                await within(asyncio.shield(confirm), _CONFIRM_TIMEOUT)
            except TimeoutError as exc:  # a server that stopped answering
                raise broker_error(self._masked, exc) from None
        except BaseException:
            await self.unwatch(channel, fut)
            raise
        return fut

    async def _subscribe(self, channel: bytes) -> None:
        try:
            if self._pubsub is None:
                self._pubsub = self._client.pubsub()
            await self._pubsub.subscribe(channel)
        except (RedisError, OSError) as exc:
            raise broker_error(self._masked, exc) from None
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._listen(self._pubsub))

    async def unwatch(self, channel: bytes, fut: asyncio.Future[None]) -> None:
        """Forget ``fut``; the last waiter of a channel unsubscribes."""
        waiters = self._waiters.get(channel)
        if waiters is None or fut not in waiters:
            return
        waiters.remove(fut)
        if not waiters:
            del self._waiters[channel]
            self._confirm.pop(channel, None)
            if self._pubsub is not None:
                with contextlib.suppress(RedisError, OSError):
                    await self._pubsub.unsubscribe(channel)

    async def _listen(self, pubsub: Any) -> None:
        try:
            while pubsub.subscribed or self._waiters:
                msg = await pubsub.get_message(timeout=1.0)
                if msg is not None:
                    self._dispatch(msg)
        except (RedisError, OSError):
            # Wake everybody: each waiter re-reads its record and subscribes again.
            self._pubsub = None
            self._fail_all()
            with contextlib.suppress(Exception):
                await pubsub.aclose()

    def _dispatch(self, msg: dict[str, Any]) -> None:
        channel = msg.get("channel")
        if not isinstance(channel, bytes):
            return
        if msg.get("type") == "subscribe":
            confirm = self._confirm.pop(channel, None)
            if confirm is not None and not confirm.done():
                confirm.set_result(None)
        elif msg.get("type") == "message":
            for fut in self._waiters.get(channel, ()):
                if not fut.done():
                    fut.set_result(None)

    def _fail_all(self) -> None:
        for channel, waiters in list(self._waiters.items()):
            for fut in waiters:
                if not fut.done():
                    fut.set_result(None)
            confirm = self._confirm.pop(channel, None)
            if confirm is not None and not confirm.done():
                confirm.set_result(None)
        self._waiters.clear()

    async def close(self) -> None:
        """Stop the reader and close the connection."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        self._fail_all()
        if self._pubsub is not None:
            with contextlib.suppress(Exception):
                await self._pubsub.aclose()
            self._pubsub = None
