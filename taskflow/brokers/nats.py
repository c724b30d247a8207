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
  by a cheap no-wait pull at least once a second. A fetch cancelled after a pull (the
  worker stopping) still settles what it pulled, for up to 2 s: left pending, a message
  would wait out its consumer's ack wait (:mod:`._nats_fetch`). Trade-off: a scheduled
  message costs one extra round trip per nak cycle and sits in the consumer's pending
  list. The alternative,
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
instead of silently disappearing, and ``FetchResult.lost`` reports it. A message whose subject
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

The broker is composed of parts it owns, each taking the ones it needs explicitly: a
:class:`~taskflow._nats.connection.Connection` (shared plumbing with the result store), a
:class:`~._nats_core.NatsCore` (the layout: streams, consumers, subjects, republishing,
dead-lettering, lease fencing, pulls), :class:`~._nats_delay.NatsDelays` (the delay
stream), :class:`~._nats_fetch.NatsFetcher`, :class:`~._nats_admin.NatsAdmin` (whose
methods the broker offers as its own) and :class:`~._nats_control.ControlLog`.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import Any, ClassVar

from nats.aio.client import Client

from .._nats.connection import Connection
from .._nats.names import subject_token, untoken
from ..clock import Clock
from ..errors import BrokerError, ConfigError, QueueFull
from ..urls import url_kwargs
from ._nats_admin import NatsAdmin
from ._nats_control import ControlLog
from ._nats_core import DEDUP_WINDOW, NatsCore
from ._nats_delay import NatsDelays
from ._nats_delivery import NatsDelivery
from ._nats_fetch import NatsFetcher
from ._nats_limits import NatsLimiter
from .base import Broker, Capabilities, DelegatedAdmin, FetchResult, Message, refuse_oversized

__all__ = ["HEADER_ROOM", "NatsBroker", "NatsDelivery"]

HEADER_ROOM = 8192
"""Bytes of ``max_payload`` a message body leaves free for headers (``Tf-*``, the error
text of a dead letter, which is cut to fit)."""


class NatsBroker(Broker, DelegatedAdmin):
    """Broker on NATS JetStream. ``prefix`` namespaces every stream, subject and bucket.

    TLS (``tls://``, or a CA or client file on ``nats://``) and credentials:
    ``tls_ca_file``, ``tls_cert_file``, ``tls_key_file``, ``tls_verify`` (None: true),
    ``tls_min_version``, ``password_file``, ``token_file``, ``creds_file``, ``nkey_file``
    (see ``docs/security.md``).
    """

    # A fetch is a pull request answered in a few milliseconds: while bodies run short, a
    # worker holds enough that the next batch comes before its messages run out.
    capabilities: ClassVar[Capabilities] = Capabilities(short_fetch_buffer=64)
    _admin: NatsAdmin

    def __init__(
        self,
        url: str = "nats://127.0.0.1:4222",
        *,
        prefix: str = "taskflow",
        lease: float = 30.0,
        connect_timeout: float = 5.0,
        tls_ca_file: str | None = None,
        tls_cert_file: str | None = None,
        tls_key_file: str | None = None,
        tls_verify: bool | None = None,
        tls_min_version: str | None = None,
        password_file: str | None = None,
        token_file: str | None = None,
        creds_file: str | None = None,
        nkey_file: str | None = None,
        clock: Clock | None = None,
    ) -> None:
        """Validate ``url`` and name the streams; ``clock`` is ignored (the server keeps time)."""
        self._conn = Connection(
            url,
            role="broker",
            owner="NatsBroker",
            connect_timeout=connect_timeout,
            security={
                "tls_ca_file": tls_ca_file,
                "tls_cert_file": tls_cert_file,
                "tls_key_file": tls_key_file,
                "tls_verify": tls_verify,
                "tls_min_version": tls_min_version,
                "password_file": password_file,
                "token_file": token_file,
                "creds_file": creds_file,
                "nkey_file": nkey_file,
            },
        )
        if not prefix:
            raise ConfigError(f"{self._conn.masked}: prefix must not be empty")
        self._too_large = (
            f"a message may have on NATS at {self._conn.masked} (the server's max_payload "
            f"less {HEADER_ROOM:,} for headers)"
        )
        self.url = self._conn.url
        self.lease = float(lease)
        self.connect_timeout = self._conn.connect_timeout
        self._core = NatsCore(self._conn, prefix, self.lease)
        self._delays = NatsDelays(self._core)
        self._admin = NatsAdmin(self._core)
        self._fetcher = NatsFetcher(self._core, self._delays, self._admin)
        self._control = ControlLog(self._conn)
        self._limiter = NatsLimiter(self._conn, self._core.state_bucket, self.lease)
        self._limits: dict[str, int] = {}
        self._subs: list[Any] = []

    @classmethod
    def from_url(cls, url: str, *, clock: Clock | None = None) -> NatsBroker:
        """Build from ``nats://host:port?prefix=..&lease=..&connect_timeout=..``.

        ``max_age`` and ``sweep_interval`` are accepted for the result store sharing the URL.
        """
        return cls(url, **url_kwargs(url, "broker", cls), clock=clock)

    # The layout's names, for operators and tests that clean up after themselves.
    @property
    def root(self) -> str:
        """The subject token every subject of this broker starts with."""
        return self._core.root

    @property
    def work(self) -> str:
        """The stream of ready messages."""
        return self._core.work

    @property
    def delays(self) -> str:
        """The stream of delayed messages."""
        return self._core.delays

    @property
    def dlq(self) -> str:
        """The stream of dead letters."""
        return self._core.dlq

    @property
    def state_bucket(self) -> str:
        """The KV bucket of pause flags."""
        return self._core.state_bucket

    def limiter(self) -> NatsLimiter:
        """Limits shared by every worker on this server and prefix, in the state bucket
        (:mod:`._nats_limits`)."""
        return self._limiter

    # -- lifecycle -------------------------------------------------------------------
    async def connect(self) -> None:
        """Connect, create streams/buckets if missing, subscribe to the core subjects."""
        if self._conn.connected:
            return
        nc = await self._conn.open()
        try:
            await self._setup(nc)
        except BaseException:
            await self.close()
            raise

    async def _setup(self, nc: Client) -> None:
        core, root = self._core, self._core.root
        work = await core.ensure_stream(core.work, f"{root}.q.>", "workqueue")
        core.dedup_window = int(work.get("duplicate_window") or DEDUP_WINDOW * 1e9) / 1e9
        await core.ensure_stream(core.delays, f"{root}.d.>", "workqueue")
        await core.ensure_stream(core.dlq, f"{root}.dlq.>", "limits")
        await core.ensure_consumer(core.delays, "delay", f"{root}.d.>", 30.0)
        js = nc.jetstream()
        try:
            await self._conn.call(js.key_value(core.state_bucket))
        except BrokerError:
            await self._conn.call(js.create_key_value(bucket=core.state_bucket, history=1))
        self._subs = [
            await nc.subscribe(f"{root}.n", cb=self._fetcher.on_notify),
            await nc.subscribe(f"{root}.ctl", cb=self._control.on_control),
            await nc.subscribe(f"{root}.pause", cb=self._admin.on_pause),
        ]

    async def close(self) -> None:
        """Close the connection and wake every waiter. Idempotent."""
        # Woken waiters run only once this awaits, when the connection already reads as
        # closed: they return instead of waiting again.
        self._core.stop()
        self._control.wake()
        await self._conn.close(drain=True)

    async def declare(self, queue: str, *, max_length: int | None = None) -> None:
        """Create the queue's ten priority consumers; remember ``max_length`` locally."""
        if max_length is not None:
            self._limits[queue] = max_length
        else:
            self._limits.pop(queue, None)
        await self._core.ensure_queue(queue)

    # -- publishing ------------------------------------------------------------------
    async def publish(self, messages: Sequence[Message]) -> None:
        """Publish all of ``messages``; on a failure, purge the ones already written."""
        if not messages:
            return
        self._check_size(messages)
        await self._check_room(messages)
        js = self._conn.jetstream()
        written: list[tuple[str, int]] = []
        try:
            for start in range(0, len(messages), 2000):
                chunk = messages[start : start + 2000]
                futures = []
                for msg in chunk:
                    headers = {"Nats-Msg-Id": msg.id, "Tf-Max": str(max(1, msg.max_deliveries))}
                    subject = self._core.route(msg.queue, msg.priority, msg.id, msg.eta, headers)
                    futures.append(
                        (
                            subject,
                            await self._conn.call(
                                js.publish_async(subject, msg.body, headers=headers)
                            ),
                        )
                    )
                for subject, fut in futures:
                    ack = await self._conn.call(fut)
                    if not ack.duplicate:
                        written.append((subject, ack.seq))
        except BaseException:
            await self._undo(written)
            raise
        await self._core.notify(
            any(m.eta is not None for m in messages),
            {(m.queue, m.priority) for m in messages if m.eta is None},
        )

    async def _undo(self, written: list[tuple[str, int]]) -> None:
        core = self._core
        for subject, seq in written:
            parts = subject.split(".")
            if parts[1] == "q":
                queue = untoken(parts[2])
                await core.delete(core.work, seq, core.consumer(queue, int(parts[3][1:])))
            else:
                await core.delete(core.delays, seq, "delay")

    def _check_size(self, messages: Sequence[Message]) -> None:
        """Refuse (PayloadError, nothing published) a body the server would not take.

        The limit is the server's ``max_payload`` less ``HEADER_ROOM``, kept free for the
        headers a retry or a dead letter adds to the same body.
        """
        refuse_oversized(messages, self._conn.client().max_payload - HEADER_ROOM, self._too_large)

    async def _check_room(self, messages: Sequence[Message]) -> None:
        wanted: dict[str, int] = {}
        for msg in messages:
            if msg.queue in self._limits:
                wanted[msg.queue] = wanted.get(msg.queue, 0) + 1
        if not wanted:
            return
        # Every waiting or leased message of every queue is in the work stream and every
        # scheduled one in the delay stream, whose counts the server keeps as it goes:
        # together they bound any queue's depth from above. Only a queue that this bound
        # does not show to have room is counted exactly, by its ten consumers' info, each
        # a scan of the stream on 2.9 (docs/operations.md).
        infos = await asyncio.gather(
            *(self._conn.api(f"STREAM.INFO.{s}", {}) for s in (self._core.work, self._core.delays))
        )
        bound = sum(int(info.get("state", {}).get("messages") or 0) for info in infos)
        for queue, count in wanted.items():
            if bound + count <= self._limits[queue]:
                continue
            counts = await self.depth(queue)
            size = counts["ready"] + counts["scheduled"]
            limit = self._limits[queue]
            if size + count > limit:
                raise QueueFull(f"queue {queue!r} is full ({size}/{limit}); nothing was enqueued")

    # -- consuming -------------------------------------------------------------------
    async def fetch(self, queues: Sequence[str], max_messages: int, timeout: float) -> FetchResult:
        """Up to ``max_messages`` deliveries: queues in order, levels 9..0, FIFO within."""
        got = await self._fetcher.fetch(queues, max_messages, timeout)
        return FetchResult(got, self._core.take_lost())

    async def cancel(self, message_id: str, queue: str) -> bool:
        """Delete a ready or scheduled message; False if leased to a worker or unknown."""
        mid, qt = subject_token(message_id), subject_token(queue)
        core = self._core
        await core.ensure_queue(queue)
        found = await core.scan(core.work, f"{core.root}.q.{qt}.*.{mid}", 1, 1)
        if found:
            seq = int(found[0]["seq"])
            level = int(str(found[0]["subject"]).split(".")[-2][1:])
            consumer = core.consumer(queue, level)
            info = await self._conn.api(f"CONSUMER.INFO.{core.work}.{consumer}", {})
            if seq <= int(info["delivered"]["stream_seq"]):
                return False  # leased to a worker: the control channel stops it
            return await core.delete(core.work, seq, consumer)
        found = await core.scan(core.delays, core.delay_subject(queue, message_id), 1, 1)
        return bool(found) and await core.delete(core.delays, int(found[0]["seq"]), "delay")

    # -- control channel -------------------------------------------------------------
    async def send_control(self, command: dict[str, Any]) -> None:
        """Broadcast on the control subject (core NATS: reaches connected workers)."""
        nc = self._conn.client()
        await self._conn.call(nc.publish(f"{self._core.root}.ctl", json.dumps(command).encode()))
        await self._conn.call(nc.flush())

    async def control_messages(self, timeout: float) -> list[dict[str, Any]]:
        """Commands received since this task's previous call, waiting up to ``timeout``."""
        return await self._control.read(timeout)

    def forget_control_reader(self) -> None:
        """Drop the current task's control cursor (called when a worker stops)."""
        self._control.forget()
