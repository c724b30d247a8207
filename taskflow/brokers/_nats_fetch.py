"""The NATS broker's fetch: priority levels pulled 9..0, admission, waiting for work.

A fetch first promotes due delayed messages, then pulls each queue's levels from the
highest down with no-wait pulls (skipping levels known empty, see
:mod:`._nats_signals`), and checks every message before it becomes a delivery: one whose
framing is malformed is dead-lettered ``undecodable``, one that ran out of deliveries
``worker_lost``; both are reported in ``FetchResult.lost``. With nothing to take it waits for an
announcement, a due time or a lease end, whichever comes first.

What a fetch pulls is leased to this process until it is acked, nak'ed or its ack wait
runs out (the lease, 30 s for the delay consumer). So the pulls and what follows them run
as a task of their own: a fetch cancelled meanwhile (a worker stopping, a stalled fetch)
lets it finish, for up to :data:`SETTLE_ON_CANCEL` seconds, then hands back the deliveries
it made. Cancelled in the middle, a delayed message would run up to 30 s late and a work
message would come back only when its lease ran out, with a delivery spent.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Sequence

from nats.aio.msg import Msg

from .._nats.framing import delivery_numbers, framing
from ..errors import BrokerError
from ._nats_admin import NatsAdmin
from ._nats_core import LEVELS, NatsCore
from ._nats_delay import NatsDelays
from ._nats_delivery import NatsDelivery
from .base import Delivery

__all__ = ["SETTLE_ON_CANCEL", "NatsFetcher"]

log = logging.getLogger("taskflow.brokers.nats")

SETTLE_ON_CANCEL = 2.0  # seconds a cancelled fetch still gives what it pulled


class NatsFetcher:
    """Leases messages of ``core``'s queues, honouring pauses (``admin``) and delays."""

    def __init__(self, core: NatsCore, delays: NatsDelays, admin: NatsAdmin) -> None:
        """A fetcher over the broker's parts."""
        self._core = core
        self._delays = delays
        self._admin = admin

    async def fetch(
        self, queues: Sequence[str], max_messages: int, timeout: float
    ) -> list[Delivery]:
        """Up to ``max_messages`` deliveries: queues in order, levels 9..0, FIFO within."""
        signals = self._core.signals
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0.0, timeout)
        while True:
            waker = signals.waker()
            try:
                got = await self._take_settled(queues, max_messages)
                remaining = deadline - loop.time()
                if got or remaining <= 0 or not self._core.conn.connected:
                    return got
                await asyncio.wait([waker], timeout=min(remaining, self._delays.until_due()))
            finally:
                signals.drop(waker)

    async def _take_settled(self, queues: Sequence[str], limit: int) -> list[Delivery]:
        """:meth:`_take`, finished even if the fetch is cancelled meanwhile (see above)."""
        work = asyncio.ensure_future(self._take(queues, limit))
        try:
            return await asyncio.shield(work)
        except asyncio.CancelledError:
            try:
                await asyncio.wait([work], timeout=SETTLE_ON_CANCEL)
                if work.done() and not work.cancelled() and work.exception() is None:
                    await self._hand_back(work.result())
            finally:
                work.cancel()
                if work.done() and not work.cancelled():
                    work.exception()  # retrieved: the fetch is cancelled either way
            raise

    @staticmethod
    async def _hand_back(deliveries: Sequence[Delivery]) -> None:
        """Put back, uncounted, what a cancelled fetch took (best effort: the lease is the
        fallback)."""
        if deliveries:
            handing = asyncio.gather(
                *(d.nack(requeue=True) for d in deliveries), return_exceptions=True
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(handing, SETTLE_ON_CANCEL)

    async def _take(self, queues: Sequence[str], limit: int) -> list[Delivery]:
        if limit <= 0:
            return []
        await self._delays.promote_due()
        self._core.signals.start_scan()
        out: list[Delivery] = []
        for queue in queues:
            if len(out) >= limit:
                break
            if await self._admin.is_paused(queue):
                continue
            await self._core.ensure_queue(queue, consume=True)
            for level in LEVELS:
                await self._take_level(queue, level, limit, out)
                if len(out) >= limit:
                    break
        return out

    async def _take_level(self, queue: str, level: int, limit: int, out: list[Delivery]) -> None:
        core, key = self._core, (queue, level)
        while len(out) < limit and not core.signals.is_empty(key):
            need = limit - len(out)
            generation = core.signals.generation(key)
            msgs = await core.pull(core.work, core.consumer(queue, level), need)
            if len(msgs) < need:
                # Empty until a publish to this level is announced (or the next rescan).
                core.signals.found_empty(key, generation)
            for msg in msgs:
                delivery = await self._admit(msg, queue, level)
                if delivery is not None:
                    out.append(delivery)
            if len(msgs) < need:
                return

    async def _admit(self, msg: Msg, queue: str, level: int) -> NatsDelivery | None:
        """A delivery for ``msg``, or None when it was dead-lettered here. Either way the
        rest of the batch is delivered: a message that cannot be filed now (the
        dead-letter stream is unreachable) stays leased and is filed when it comes back."""
        delivered, seq = delivery_numbers(msg)
        try:
            frame = framing(msg)
        except ValueError as exc:
            await self._file(
                msg,
                queue,
                level,
                count=delivered,
                most=1,
                reason="undecodable",
                error=f"malformed framing: {exc}",
            )
            return None
        count = delivered + frame.base
        if count > frame.max_deliveries:
            await self._file(
                msg,
                queue,
                level,
                count=count - 1,
                most=frame.max_deliveries,
                reason="worker_lost",
                error="lease expired",
            )
            return None
        return NatsDelivery(
            self._core,
            msg,
            frame.id,
            queue,
            level,
            seq=seq,
            count=count,
            max_deliveries=frame.max_deliveries,
        )

    async def _file(
        self,
        msg: Msg,
        queue: str,
        level: int,
        *,
        count: int,
        most: int,
        reason: str,
        error: str,
    ) -> None:
        try:
            await self._core.bury(
                msg,
                queue,
                level,
                count=count,
                max_deliveries=most,
                reason=reason,
                error=error,
                report=True,
            )
        except BrokerError as exc:
            log.warning("could not dead-letter message %s of %s (%s)", msg.subject, queue, exc)

    async def on_notify(self, msg: Msg) -> None:
        """An announcement on ``P.n`` of what another process published."""
        signals = self._core.signals
        try:
            change = json.loads(msg.data)
            signals.mark(bool(change["d"]), change["l"])
        except (ValueError, KeyError, TypeError):
            signals.mark(True, [])
            signals.forget_empty()
