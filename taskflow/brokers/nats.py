"""The NATS JetStream broker (``nats://host:4222?prefix=shop&lease=30``).

Layout, per app ``prefix`` (``P`` is its subject token, ``N`` its stream-name form):

* stream ``TF_N_WORK`` (work-queue retention) holds ready messages on subjects
  ``P.q.<queue>.p<0-9>.<id>``. Every queue has ten durable pull consumers, one per priority
  level; ``fetch`` pulls the levels from 9 down to 0 (no-wait batches), so priority is strict
  and each level is FIFO. The message id in the subject lets ``cancel`` find and purge one
  message by subject.
* stream ``TF_N_DELAY`` (work queue) holds messages with a future ``eta`` on
  ``P.d.<queue>.<id>``. One shared consumer hands them to whichever worker fetches next: a
  message that is not due is nak'ed with ``delay = eta - now``, so the *server* keeps the
  timer; a due one is republished to its work subject (deduplicated by the delay sequence)
  and acked. Retry backoff uses the same path. The fetcher that nak'ed remembers the due
  time and wakes for it; redeliveries another (possibly dead) worker nak'ed are picked up
  by a cheap no-wait pull at least once a second. Trade-off: a scheduled message costs one
  extra round trip per nak cycle and sits in the consumer's pending list. The alternative,
  ``nak(delay)`` on the work message itself, would spend delivery attempts and hold a
  lease-sized slot in the work consumer. nats-server 2.12 has message schedules
  (``Nats-Schedule``) and 2.11 per-message TTLs; with them the delay stream collapses into
  one scheduled publish.
* stream ``TF_N_DLQ`` (limits retention) keeps dead letters on ``P.dlq.<queue>.<id>`` with
  ``Tf-Reason``/``Tf-Error`` headers.
* KV bucket ``TF_N_STATE`` holds pause flags; core subjects ``P.n`` (wake fetchers),
  ``P.ctl`` (control broadcast) and ``P.pause`` (pause changes) carry no data that must
  survive.

Leases are the consumers' ``ack_wait``, set by the broker that consumes the queue (a
producer only creates missing consumers); ``touch`` sends an in-progress ack and a
delivery's ``lease`` is the ack wait the server reported. Consumers have no
``max_deliver`` limit: the count is checked on fetch against the per-message budget in
the ``Tf-Max`` header, so an exhausted message goes to the DLQ with reason ``worker_lost``
instead of silently disappearing, and ``take_lost`` reports it. A message whose subject
or ``Tf-*`` headers are malformed is dead-lettered alone (``undecodable``). Bodies are
checked against the server's ``max_payload`` at publish. The connection logs one WARNING
line per disconnect and per reconnect. ``nack(requeue=True)`` republishes the message with its
count carried in ``Tf-Base`` (JetStream counts every delivery; the contract does not).

A fetch skips a level it found empty until a publish to it is announced on ``P.n``
(publishers send the (queue, level) pairs they wrote) or a second passed; that keeps a
one-message fetch from costing ten round trips. A message redelivered because a *remote*
worker's lease ran out is therefore seen within that second, not at once. Messages are
removed only by sequence (never a filtered purge) and the consumer's info is read after a
delete: 2.9 otherwise keeps counting the deleted message as pending and leaves no-wait
pulls unanswered (a pull unanswered for a second is treated as empty and heals the same
way).

Limits, all from JetStream 2.9: ``publish`` of many messages is not a transaction (a failed
batch is compensated by deleting what was written); a settle call from a delivery whose
lease ran out *locally* returns False, but a call racing the server's redelivery within the
last few percent of the lease may still act on the redelivered copy; ``nack``/``retry``
publish the replacement before acking the original (a crash in between duplicates it);
``max_length`` is checked before publishing, not atomically with it. Fake clocks are not
supported (the server keeps time).

This module holds the public class with publishing, fetching, cancel and the control
channel; its parts live next to it: ``_nats_core`` (state, JetStream API calls,
republish/bury, leases), ``_nats_pull`` (no-wait pulls), ``_nats_delay`` (the delay
stream), ``_nats_admin`` (admin methods), ``_nats_delivery`` and ``_nats_common`` (names).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Sequence
from typing import Any, ClassVar

from nats.aio.client import Client
from nats.aio.msg import Msg

from .._waiters import within
from ..clock import Clock
from ..errors import BrokerError, PayloadError, QueueFull
from ..urls import known_options, option_float, parse_url, reject_unknown
from ._nats_admin import NatsAdmin
from ._nats_common import (
    LEVELS,
    RESCAN,
    connect_nats,
    framing,
    stream_name,
    subject_token,
    untoken,
)
from ._nats_delay import NatsDelays
from ._nats_delivery import NatsDelivery
from .base import Broker, BrokerAdmin, Capabilities, Delivery, Message

__all__ = ["NatsBroker", "NatsDelivery", "connect_nats", "stream_name", "subject_token"]

log = logging.getLogger("taskflow.brokers.nats")

HEADER_ROOM = 8192
"""Bytes of ``max_payload`` a message body leaves free for headers (``Tf-*``, the error
text of a dead letter, which is cut to fit)."""


class NatsBroker(NatsAdmin, NatsDelays, Broker, BrokerAdmin):
    """Broker on NATS JetStream. ``prefix`` namespaces every stream, subject and bucket."""

    capabilities: ClassVar[Capabilities] = Capabilities()

    def __init__(
        self,
        url: str = "nats://127.0.0.1:4222",
        *,
        prefix: str = "taskflow",
        lease: float = 30.0,
        connect_timeout: float = 5.0,
        clock: Clock | None = None,
    ) -> None:
        """Validate ``url`` and name the streams; ``clock`` is ignored (the server keeps time)."""
        super().__init__(url, prefix=prefix, lease=lease, connect_timeout=connect_timeout)
        self._control: list[dict[str, Any]] = []
        self._control_base = 0
        self._control_cursors: dict[int, int] = {}
        self._control_wakers: list[asyncio.Future[None]] = []

    @classmethod
    def from_url(cls, url: str, *, clock: Clock | None = None) -> NatsBroker:
        """Build from ``nats://host:port?prefix=..&lease=..&connect_timeout=..``.

        ``max_age`` and ``sweep_interval`` are accepted for the result store sharing the URL.
        """
        parsed = parse_url(url, "broker")
        reject_unknown(parsed, known_options(parsed, "broker"))
        return cls(
            url,
            prefix=parsed.options.get("prefix", "taskflow"),
            lease=option_float(parsed, "lease", 30.0),
            connect_timeout=option_float(parsed, "connect_timeout", 5.0),
        )

    # -- lifecycle -------------------------------------------------------------------
    async def connect(self) -> None:
        """Connect, create streams/buckets if missing, subscribe to the core subjects."""
        if self._nc is not None:
            return
        nc = await connect_nats(self._server, self._masked, self.connect_timeout)
        self._nc = nc
        try:
            await self._setup(nc)
        except BaseException:
            await self.close()
            raise

    async def _setup(self, nc: Client) -> None:
        await self._ensure_stream(self.work, f"{self.root}.q.>", "workqueue")
        await self._ensure_stream(self.delays, f"{self.root}.d.>", "workqueue")
        await self._ensure_stream(self.dlq, f"{self.root}.dlq.>", "limits")
        await self._ensure_consumer(self.delays, "delay", f"{self.root}.d.>", 30.0)
        js = nc.jetstream()
        try:
            await self._call(js.key_value(self.state_bucket))
        except BrokerError:
            await self._call(js.create_key_value(bucket=self.state_bucket, history=1))
        self._subs = [
            await nc.subscribe(f"{self.root}.n", cb=self._on_notify),
            await nc.subscribe(f"{self.root}.ctl", cb=self._on_control),
            await nc.subscribe(f"{self.root}.pause", cb=self._on_pause),
        ]

    async def close(self) -> None:
        """Close the connection and wake every waiter. Idempotent."""
        nc, self._nc, self._js = self._nc, None, None
        for task in list(self._background):
            task.cancel()
        self._wake_all()
        self._wake_control()
        if nc is not None:
            with contextlib.suppress(Exception):
                await within(nc.drain(), 5.0)
            with contextlib.suppress(Exception):
                await nc.close()
        self._declared.clear()
        self._consuming.clear()
        self._pullers.clear()

    async def declare(self, queue: str, *, max_length: int | None = None) -> None:
        """Create the queue's ten priority consumers; remember ``max_length`` locally."""
        if max_length is not None:
            self._limits[queue] = max_length
        else:
            self._limits.pop(queue, None)
        await self._ensure_queue(queue)

    # -- publishing ------------------------------------------------------------------
    async def publish(self, messages: Sequence[Message]) -> None:
        """Publish all of ``messages``; on a failure, purge the ones already written."""
        if not messages:
            return
        self._check_size(messages)
        await self._check_room(messages)
        js = self._jet()
        written: list[tuple[str, int]] = []
        try:
            for start in range(0, len(messages), 2000):
                chunk = messages[start : start + 2000]
                futures = []
                for msg in chunk:
                    headers = {"Nats-Msg-Id": msg.id, "Tf-Max": str(max(1, msg.max_deliveries))}
                    subject = self._route(msg.queue, msg.priority, msg.id, msg.eta, headers)
                    futures.append(
                        (
                            subject,
                            await self._call(js.publish_async(subject, msg.body, headers=headers)),
                        )
                    )
                for subject, fut in futures:
                    ack = await self._call(fut)
                    if not ack.duplicate:
                        written.append((subject, ack.seq))
        except BaseException:
            await self._undo(written)
            raise
        await self._notify(
            any(m.eta is not None for m in messages),
            {(m.queue, m.priority) for m in messages if m.eta is None},
        )

    async def _undo(self, written: list[tuple[str, int]]) -> None:
        for subject, seq in written:
            parts = subject.split(".")
            if parts[1] == "q":
                queue = untoken(parts[2])
                await self._delete(self.work, seq, self._consumer(queue, int(parts[3][1:])))
            else:
                await self._delete(self.delays, seq, "delay")

    def _check_size(self, messages: Sequence[Message]) -> None:
        """Refuse (PayloadError, nothing published) a body the server would not take.

        The limit is the server's ``max_payload`` less ``HEADER_ROOM``, kept free for the
        headers a retry or a dead letter adds to the same body.
        """
        limit = self._conn().max_payload - HEADER_ROOM
        for msg in messages:
            if len(msg.body) > limit:
                raise PayloadError(
                    f"task {msg.task or '?'}[{msg.id}]: the message is {len(msg.body):,} bytes, "
                    f"over the {limit:,} a message may have on NATS at {self._masked} "
                    f"(the server's max_payload less {HEADER_ROOM:,} for headers); "
                    "nothing was enqueued"
                )

    async def _check_room(self, messages: Sequence[Message]) -> None:
        wanted: dict[str, int] = {}
        for msg in messages:
            if msg.queue in self._limits:
                wanted[msg.queue] = wanted.get(msg.queue, 0) + 1
        for queue, count in wanted.items():
            counts = await self.depth(queue)
            size = counts["ready"] + counts["scheduled"]
            limit = self._limits[queue]
            if size + count > limit:
                raise QueueFull(f"queue {queue!r} is full ({size}/{limit}); nothing was enqueued")

    # -- consuming -------------------------------------------------------------------
    async def fetch(
        self, queues: Sequence[str], max_messages: int, timeout: float
    ) -> list[Delivery]:
        """Up to ``max_messages`` deliveries: queues in order, levels 9..0, FIFO within."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0.0, timeout)
        while True:
            waker = loop.create_future()
            self._wakers.append(waker)
            try:
                got = await self._take(queues, max_messages)
                remaining = deadline - loop.time()
                if got or remaining <= 0 or self._nc is None:
                    return got
                await asyncio.wait([waker], timeout=min(remaining, self._until_due()))
            finally:
                if waker in self._wakers:
                    self._wakers.remove(waker)

    async def _take(self, queues: Sequence[str], limit: int) -> list[Delivery]:
        if limit <= 0:
            return []
        await self._promote_due()
        if self._rescan or time.monotonic() - self._last_scan >= RESCAN:
            # Redeliveries (a lease ran out somewhere) announce themselves to nobody.
            self._rescan = False
            self._last_scan = time.monotonic()
            self._known_empty.clear()
        out: list[Delivery] = []
        for queue in queues:
            if len(out) >= limit:
                break
            if await self._is_paused(queue):
                continue
            await self._ensure_queue(queue, consume=True)
            for level in LEVELS:
                await self._take_level(queue, level, limit, out)
                if len(out) >= limit:
                    break
        return out

    async def _take_level(self, queue: str, level: int, limit: int, out: list[Delivery]) -> None:
        key = (queue, level)
        while len(out) < limit and key not in self._known_empty:
            need = limit - len(out)
            generation = self._level_gen.get(key, 0)
            msgs = await self._pull(self.work, self._consumer(queue, level), need)
            if len(msgs) < need and self._level_gen.get(key, 0) == generation:
                # Empty until a publish to this level is announced (or the next rescan).
                self._known_empty.add(key)
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
        try:
            frame = framing(msg)
        except ValueError as exc:
            await self._file(
                msg,
                queue,
                level,
                count=msg.metadata.num_delivered,
                most=1,
                reason="undecodable",
                error=f"malformed framing: {exc}",
            )
            return None
        count = msg.metadata.num_delivered + frame.base
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
            self, msg, queue, level, count=count, max_deliveries=frame.max_deliveries
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
            await self._bury(
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

    async def _on_notify(self, msg: Msg) -> None:
        try:
            change = json.loads(msg.data)
            self._mark(bool(change["d"]), change["l"])
        except (ValueError, KeyError, TypeError):
            self._mark(True, [])
            self._known_empty.clear()

    async def cancel(self, message_id: str, queue: str) -> bool:
        """Delete a ready or scheduled message; False if leased to a worker or unknown."""
        mid, qt = subject_token(message_id), subject_token(queue)
        await self._ensure_queue(queue)
        found = await self._scan(self.work, f"{self.root}.q.{qt}.*.{mid}", 1, 1)
        if found:
            seq = int(found[0]["seq"])
            level = int(str(found[0]["subject"]).split(".")[-2][1:])
            info = await self._api(f"CONSUMER.INFO.{self.work}.{self._consumer(queue, level)}", {})
            if seq <= int(info["delivered"]["stream_seq"]):
                return False  # leased to a worker: the control channel stops it
            return await self._delete(self.work, seq, self._consumer(queue, level))
        found = await self._scan(self.delays, self._delay_subject(queue, message_id), 1, 1)
        return bool(found) and await self._delete(self.delays, int(found[0]["seq"]), "delay")

    # -- control channel -------------------------------------------------------------
    async def send_control(self, command: dict[str, Any]) -> None:
        """Broadcast on the control subject (core NATS: reaches connected workers)."""
        await self._call(self._conn().publish(f"{self.root}.ctl", json.dumps(command).encode()))
        await self._call(self._conn().flush())

    async def _on_control(self, msg: Msg) -> None:
        with contextlib.suppress(ValueError):
            command = json.loads(msg.data)
            if isinstance(command, dict):
                self._control.append(command)
                if len(self._control) > 10_000:
                    del self._control[:5_000]
                    self._control_base += 5_000
                self._wake_control()

    def _wake_control(self) -> None:
        wakers, self._control_wakers = self._control_wakers, []
        for fut in wakers:
            if not fut.done():
                fut.set_result(None)

    async def control_messages(self, timeout: float) -> list[dict[str, Any]]:
        """Commands received since this task's previous call, waiting up to ``timeout``."""
        key = id(asyncio.current_task())
        end = self._control_base + len(self._control)
        cursor = self._control_cursors.setdefault(key, end)
        if cursor >= end and timeout > 0 and self._nc is not None:
            fut = asyncio.get_running_loop().create_future()
            self._control_wakers.append(fut)
            await asyncio.wait([fut], timeout=timeout)
        end = self._control_base + len(self._control)
        self._control_cursors[key] = end
        return self._control[max(0, cursor - self._control_base) :]

    def forget_control_reader(self) -> None:
        """Drop the current task's control cursor (called when a worker stops)."""
        self._control_cursors.pop(id(asyncio.current_task()), None)
