"""Deliveries of the NATS broker: a leased JetStream message with locally fenced settles."""

from __future__ import annotations

import time

from nats.aio.msg import Msg

from ._nats_core import NatsCore
from .base import Delivery

__all__ = ["NatsDelivery"]


class NatsDelivery(Delivery):
    """A message leased from a JetStream consumer; settle calls are fenced locally."""

    __slots__ = ("_core", "_deadline", "_lease", "_msg", "_seq", "_token", "max_deliveries")

    def __init__(
        self,
        core: NatsCore,
        msg: Msg,
        mid: str,
        queue: str,
        priority: int,
        *,
        seq: int,
        count: int,
        max_deliveries: int,
    ) -> None:
        """``msg`` as pulled: ``mid`` is its message id, ``seq`` its stream sequence."""
        super().__init__(mid, queue, msg.data, priority, count)
        self._core = core
        self._msg = msg
        self._seq = seq
        self.max_deliveries = max_deliveries
        # The consumer's ack wait, as the server has it: the lease that really applies.
        self._lease = core.ack_wait(queue)
        self._token = core.lease_out(self._seq, self._lease)
        self._deadline = time.monotonic() + self._lease

    @property
    def lease(self) -> float | None:
        """The consumer's ack wait."""
        return self._lease

    def _claim(self, final: bool) -> bool:
        # A safety margin keeps a settle call from racing the server's redelivery.
        margin = self._lease * 0.05
        if time.monotonic() > self._deadline - margin:
            return False
        return self._core.lease_held(self._seq, self._token, release=final)

    async def ack(self) -> bool:
        """Remove the message."""
        if not self._claim(True):
            return False
        await self._core.ack(self._msg)
        return True

    async def nack(self, *, requeue: bool = True) -> bool:
        """Republish uncounted (requeue) or drop."""
        if not self._claim(True):
            return False
        if requeue:
            await self._core.republish(
                self._msg,
                self.body,
                base=self.delivery_count - 1,
                max_deliveries=self.max_deliveries,
                eta=None,
                dedup=f"r{self._seq}.{self.delivery_count}",
            )
        await self._core.ack(self._msg)
        return True

    async def retry(self, body: bytes, delay: float, *, max_deliveries: int = 1) -> bool:
        """Publish the replacement (to the delay stream if ``delay``), then ack this one."""
        if not self._claim(True):
            return False
        eta = time.time() + delay if delay > 0 else None
        await self._core.republish(
            self._msg,
            body,
            base=0,
            max_deliveries=max(1, max_deliveries),
            eta=eta,
            dedup=f"t{self._seq}.{self.delivery_count}",
        )
        await self._core.ack(self._msg)
        return True

    async def touch(self) -> bool:
        """In-progress ack: the server restarts the ack-wait timer."""
        if not self._claim(False):
            return False
        await self._core.conn.call(self._msg.in_progress())
        self._deadline = time.monotonic() + self._lease
        return True

    async def dead_letter(self, reason: str, error: str | None = None) -> bool:
        """Copy to the DLQ stream with the reason, then ack."""
        if not self._claim(True):
            return False
        await self._core.bury(
            self._msg,
            self.queue,
            self.priority,
            count=self.delivery_count,
            max_deliveries=self.max_deliveries,
            reason=reason,
            error=error,
        )
        return True
