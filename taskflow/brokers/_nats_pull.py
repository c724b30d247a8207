"""No-wait pulls from one JetStream pull consumer (used by the NATS broker's fetch)."""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Any

from nats.aio.msg import Msg

from ._nats_common import PULL_TIMEOUT, pull_status, unsubscribe_later

if TYPE_CHECKING:
    from ._nats_core import NatsCore

__all__ = ["Puller"]


class Puller:
    """No-wait pulls from one consumer through one inbox, one request at a time.

    JetStream delivers pulled messages under their own subjects, so requests are told apart
    by subscription, not by reply subject. A request abandoned half-way (cancelled, timed
    out) retires the inbox so that its late status cannot end the next request; its late
    messages are handed back uncounted.
    """

    def __init__(self, broker: NatsCore, stream: str, consumer: str) -> None:
        """A puller for ``consumer`` of ``stream``; nothing is subscribed until a pull."""
        self.broker = broker
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
                self.broker._spawn(self.broker._requeue_orphan(msg))

        return on_msg

    async def pull(self, batch: int) -> list[Msg]:
        """Whatever the consumer has now, up to ``batch`` messages (possibly none)."""
        async with self.lock:
            nc = self.broker._conn()
            if self.sub is None:
                self.inbox = nc.new_inbox()
                self.sub = await nc.subscribe(self.inbox, cb=self._listener(self.inbox))
            queue: asyncio.Queue[Msg] = asyncio.Queue()
            self.active = queue
            done = False
            try:
                await self.broker._call(
                    nc.publish(
                        self.api,
                        json.dumps({"batch": batch, "no_wait": True}).encode(),
                        reply=self.inbox,
                    )
                )
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
                # asyncio.timeout, not wait_for: on 3.11 wait_for can drop an item that
                # arrives as the timeout fires, and can swallow a cancellation.
                async with asyncio.timeout(PULL_TIMEOUT):
                    msg = await queue.get()
            except TimeoutError:
                # 2.9 leaves a no-wait pull unanswered when the consumer's pending count
                # went stale (after a message delete); asking for the consumer's info
                # recounts it. An unreachable server raises BrokerError here instead.
                await self.broker._api(self.info, {})
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
            self.broker._spawn(unsubscribe_later(sub, 2.0))
