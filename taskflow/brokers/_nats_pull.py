"""No-wait pulls from one JetStream pull consumer (used by the NATS broker's fetch)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine
from typing import Any

from nats.aio.msg import Msg

from .._nats.connection import Connection
from .._nats.framing import pull_status

__all__ = ["PULL_TIMEOUT", "Puller"]

PULL_TIMEOUT = 1.0  # a no-wait pull is answered at once; longer means a stale consumer

Spawn = Callable[[Coroutine[Any, Any, Any]], None]
"""Runs a coroutine in the background (the broker cancels it on close)."""


async def _unsubscribe_later(sub: Any, delay: float) -> None:
    """Drop ``sub`` after ``delay`` seconds (or at once when cancelled)."""
    try:
        await asyncio.sleep(delay)
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()


async def _next(queue: asyncio.Queue[Msg]) -> Msg:
    """The next message, waiting at most :data:`PULL_TIMEOUT` (TimeoutError)."""
    # asyncio.timeout, not wait_for: on 3.11 wait_for can drop an item that arrives as the
    # timeout fires, and can swallow a cancellation.
    async with asyncio.timeout(PULL_TIMEOUT):
        return await queue.get()


class Puller:
    """No-wait pulls from one consumer through one inbox, one request at a time.

    JetStream delivers pulled messages under their own subjects, so requests are told apart
    by subscription, not by reply subject. A request abandoned half-way (cancelled, timed
    out) retires the inbox so that its late status cannot end the next request; its late
    messages are handed back uncounted.
    """

    def __init__(
        self,
        conn: Connection,
        stream: str,
        consumer: str,
        spawn: Spawn,
        orphan: Callable[[Msg], Coroutine[Any, Any, None]],
    ) -> None:
        """A puller for ``consumer`` of ``stream``; nothing is subscribed until a pull.
        ``orphan`` hands back a message that arrived for an abandoned request."""
        self.conn = conn
        self.spawn = spawn
        self.orphan = orphan
        self.api = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}"
        self.info = f"CONSUMER.INFO.{stream}.{consumer}"
        self.lock = asyncio.Lock()
        self.sub: Any = None
        self.inbox = ""
        self.active: asyncio.Queue[Msg] | None = None
        self.stalled = False

    def _listener(self, sub_inbox: str) -> Any:
        async def on_msg(msg: Msg) -> None:
            if sub_inbox == self.inbox and self.active is not None:
                self.active.put_nowait(msg)
            elif pull_status(msg) is None and msg.reply:
                self.spawn(self.orphan(msg))

        return on_msg

    async def pull(self, batch: int) -> list[Msg]:
        """Whatever the consumer has now, up to ``batch`` messages (possibly none)."""
        async with self.lock:
            nc = self.conn.client()
            if self.sub is None:
                self.inbox = nc.new_inbox()
                self.sub = await nc.subscribe(self.inbox, cb=self._listener(self.inbox))
            queue: asyncio.Queue[Msg] = asyncio.Queue()
            self.active = queue
            done = False
            try:
                request = b'{"batch":%d,"no_wait":true}' % batch
                await self.conn.publish(self.api, request, reply=self.inbox)
                msgs = await self._collect(queue, batch)
                done = True
                return msgs
            finally:
                self.active = None
                if not done or self.stalled:
                    self.stalled = False
                    await self._retire()

    async def _collect(self, queue: asyncio.Queue[Msg], batch: int) -> list[Msg]:
        msgs: list[Msg] = []
        while len(msgs) < batch:
            try:
                # A batch arrives in a few reads: what is there already is taken without
                # arming a timer per message.
                msg = queue.get_nowait() if not queue.empty() else await _next(queue)
            except TimeoutError:
                # 2.9 leaves a no-wait pull unanswered when the consumer's pending count
                # went stale (after a message delete); asking for the consumer's info
                # recounts it. An unreachable server raises BrokerError here instead.
                await self.conn.api(self.info, {})
                self.stalled = True
                return msgs
            if pull_status(msg) is not None:
                break
            msgs.append(msg)
        return msgs

    async def _retire(self) -> None:
        sub, self.sub, self.inbox = self.sub, None, ""
        if sub is not None:
            # Keep listening briefly so late deliveries are handed back, not stranded.
            self.spawn(_unsubscribe_later(sub, 2.0))
