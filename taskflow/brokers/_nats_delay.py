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

from .._nats.framing import framing
from .._nats.names import untoken
from ._nats_core import NatsCore

__all__ = ["DELAY_POLL", "NatsDelays"]

DELAY_POLL = 1.0  # seconds between no-wait pulls of the delay consumer while idle


class NatsDelays:
    """Promotes due messages from the delay stream and times the next wake-up."""

    def __init__(self, core: NatsCore) -> None:
        """The delay stream of ``core``'s layout."""
        self._core = core
        self._due: list[float] = []  # etas this process nak'ed, earliest first
        self._last_pull = 0.0

    def until_due(self) -> float:
        """Seconds until something the server holds may become deliverable."""
        now, mono = time.time(), time.monotonic()
        nxt = self._last_pull + DELAY_POLL - mono
        if self._due:
            nxt = min(nxt, self._due[0] - now + 0.002)
        # A lease this process handed out may run out: the server then redelivers.
        lease_end = self._core.next_lease_end(mono)
        if lease_end is not None:
            nxt = min(nxt, lease_end - mono + 0.01)
        return max(0.005, nxt)

    async def promote_due(self) -> None:
        """Move due delayed messages to their work subjects; nak the rest with a delay."""
        signals = self._core.signals
        now_mono = time.monotonic()
        due = bool(self._due) and self._due[0] <= time.time()
        if not (signals.delay_dirty or due or now_mono - self._last_pull >= DELAY_POLL):
            return
        signals.delay_dirty = False
        self._last_pull = now_mono
        while self._due and self._due[0] <= time.time() - 0.25:
            heapq.heappop(self._due)  # someone else promoted it, or it was cancelled
        while True:
            msgs = await self._core.pull(self._core.delays, "delay", 256)
            for msg in msgs:
                await self._promote(msg)
            if len(msgs) < 256:
                return

    async def _promote(self, msg: Msg) -> None:
        core = self._core
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
            await core.conn.call(msg.nak(delay=wait))
            heapq.heappush(self._due, eta)
            return
        await core.republish(
            msg,
            msg.data,
            base=frame.base,
            max_deliveries=frame.max_deliveries,
            eta=None,
            dedup=f"d{msg.metadata.sequence.stream}",
        )
        while self._due and self._due[0] <= eta:
            heapq.heappop(self._due)
        await core.ack(msg)

    async def _bury_delayed(self, msg: Msg, error: str) -> None:
        """Dead-letter a delayed message that cannot be scheduled (``undecodable``), under
        its queue where the subject names one."""
        parts = msg.subject.split(".")
        try:
            queue = untoken(parts[2]) if len(parts) == 4 else ""
        except ValueError:
            queue = ""
        await self._core.bury(
            msg,
            queue or "_",
            0,
            count=msg.metadata.num_delivered,
            max_deliveries=1,
            reason="undecodable",
            error=error,
            report=bool(queue),
        )
