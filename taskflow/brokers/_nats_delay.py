"""The NATS broker's delay stream: scheduled messages and retry backoff.

Messages with a future ``eta`` wait on ``P.d.<queue>.<id>`` under one shared consumer.
Whichever fetcher pulls one either naks it with ``delay = eta - now`` (the server keeps the
timer) or, once due, republishes it to its work subject (deduplicated by the delay
sequence) and acks it. See :mod:`taskflow.brokers.nats` for the trade-offs.
"""

from __future__ import annotations

import heapq
import time

from nats.aio.msg import Msg

from ._nats_common import DELAY_POLL, framing, untoken
from ._nats_core import NatsCore

__all__ = ["NatsDelays"]


class NatsDelays(NatsCore):
    """Mixin: promote due messages from the delay stream and time the next wake-up."""

    def _until_due(self) -> float:
        """Seconds until something the server holds may become deliverable."""
        now, mono = time.time(), time.monotonic()
        nxt = self._last_delay_pull + DELAY_POLL - mono
        if self._due:
            nxt = min(nxt, self._due[0] - now + 0.002)
        # A lease this process handed out may run out: the server then redelivers.
        while self._lease_ends and self._lease_ends[0] < mono:
            heapq.heappop(self._lease_ends)
            self._rescan = True
        if self._lease_ends:
            nxt = min(nxt, self._lease_ends[0] - mono + 0.01)
        return max(0.005, nxt)

    async def _promote_due(self) -> None:
        """Move due delayed messages to their work subjects; nak the rest with a delay."""
        now_mono = time.monotonic()
        due = bool(self._due) and self._due[0] <= time.time()
        if not (self._delay_dirty or due or now_mono - self._last_delay_pull >= DELAY_POLL):
            return
        self._delay_dirty = False
        self._last_delay_pull = now_mono
        while self._due and self._due[0] <= time.time() - 0.25:
            heapq.heappop(self._due)  # someone else promoted it, or it was cancelled
        while True:
            msgs = await self._pull(self.delays, "delay", 256)
            for msg in msgs:
                await self._promote(msg)
            if len(msgs) < 256:
                return

    async def _promote(self, msg: Msg) -> None:
        try:
            frame = framing(msg)
            if frame.eta is None:
                raise ValueError("a work subject in the delay stream")
        except ValueError as exc:
            await self._bury_delayed(msg, f"malformed framing: {exc}")
            return
        eta = frame.eta
        wait = eta - time.time()
        if wait > 0.001:
            await self._call(msg.nak(delay=wait))
            heapq.heappush(self._due, eta)
            return
        await self._republish(
            msg,
            msg.data,
            base=frame.base,
            max_deliveries=frame.max_deliveries,
            eta=None,
            dedup=f"d{msg.metadata.sequence.stream}",
        )
        while self._due and self._due[0] <= eta:
            heapq.heappop(self._due)
        await self._ack(msg)

    async def _bury_delayed(self, msg: Msg, error: str) -> None:
        """Dead-letter a delayed message that cannot be scheduled (``undecodable``), under
        its queue where the subject names one."""
        parts = msg.subject.split(".")
        try:
            queue = untoken(parts[2]) if len(parts) == 4 else ""
        except ValueError:
            queue = ""
        await self._bury(
            msg,
            queue or "_",
            0,
            count=msg.metadata.num_delivered,
            max_deliveries=1,
            reason="undecodable",
            error=error,
            report=bool(queue),
        )
