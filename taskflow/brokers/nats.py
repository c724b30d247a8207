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

Leases are the consumers' ``ack_wait``; ``touch`` sends an in-progress ack. Consumers have
no ``max_deliver`` limit: the count is checked on fetch against the per-message budget in
the ``Tf-Max`` header, so an exhausted message goes to the DLQ with reason ``worker_lost``
instead of silently disappearing. ``nack(requeue=True)`` republishes the message with its
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
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import heapq
import itertools
import json
import re
import time
from collections.abc import Sequence
from typing import Any, ClassVar

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.errors import NotFoundError

from ..clock import Clock
from ..errors import BrokerError, ConfigError, QueueFull
from ..urls import option_float, parse_url, reject_unknown
from .base import Broker, BrokerAdmin, Capabilities, DeadLetter, Delivery, Message

__all__ = ["NatsBroker", "NatsDelivery", "connect_nats", "stream_name", "subject_token"]

_PLAIN = re.compile(r"[A-Za-z0-9_-]+")
_LEVELS = range(9, -1, -1)
_DELAY_POLL = 1.0  # seconds between no-wait pulls of the delay consumer while idle
_PAUSE_CACHE = 2.0  # seconds a pause flag read from KV is trusted
_RESCAN = 1.0  # seconds a priority level seen empty is skipped without an announcement
_API_TIMEOUT = 5.0
_PULL_TIMEOUT = 1.0  # a no-wait pull is answered at once; longer means a stale consumer


def subject_token(text: str) -> str:
    """``text`` as one subject token: kept if plain, else ``=`` + hex (never ambiguous)."""
    return text if _PLAIN.fullmatch(text) else "=" + text.encode().hex()


def _untoken(token: str) -> str:
    return bytes.fromhex(token[1:]).decode() if token.startswith("=") else token


def stream_name(text: str) -> str:
    """A name valid for streams, consumers and KV buckets (plain, or a stable hash)."""
    return text if _PLAIN.fullmatch(text) else "h" + hashlib.sha1(text.encode()).hexdigest()[:16]


async def connect_nats(url: str, masked: str, timeout: float) -> Client:
    """Connect with automatic reconnects; BrokerError naming ``masked`` within ``timeout``."""

    async def quiet(_exc: Exception) -> None:
        return None

    try:
        return await asyncio.wait_for(
            nats.connect(
                servers=[url],
                connect_timeout=timeout,
                allow_reconnect=True,
                max_reconnect_attempts=-1,
                reconnect_time_wait=0.25,
                error_cb=quiet,
            ),
            timeout + 1.0,
        )
    except Exception as exc:
        reason = type(exc).__name__ if not str(exc) else str(exc)
        raise BrokerError(f"cannot connect to NATS at {masked}: {reason}") from None


class _Puller:
    """No-wait pulls from one consumer through one inbox, one request at a time.

    JetStream delivers pulled messages under their own subjects, so requests are told apart
    by subscription, not by reply subject. A request abandoned half-way (cancelled, timed
    out) retires the inbox so that its late status cannot end the next request; its late
    messages are handed back uncounted.
    """

    def __init__(self, broker: NatsBroker, stream: str, consumer: str) -> None:
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
            elif _status(msg) is None and msg.reply:
                self.broker._spawn(self.broker._requeue_orphan(msg))

        return on_msg

    async def pull(self, batch: int) -> list[Msg]:
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
                async with asyncio.timeout(_PULL_TIMEOUT):
                    msg = await queue.get()
            except TimeoutError:
                # 2.9 leaves a no-wait pull unanswered when the consumer's pending count
                # went stale (after a message delete); asking for the consumer's info
                # recounts it. An unreachable server raises BrokerError here instead.
                await self.broker._api(self.info, {})
                self.stalled = True
                return msgs
            if _status(msg) is not None:
                break
            msgs.append(msg)
        return msgs

    async def _retire(self) -> None:
        sub, self.sub, self.inbox = self.sub, None, ""
        if sub is not None:
            # Keep listening briefly so late deliveries are handed back, not stranded.
            self.broker._spawn(_unsubscribe_later(sub, 2.0))


async def _unsubscribe_later(sub: Any, delay: float) -> None:
    try:
        await asyncio.sleep(delay)
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()


def _status(msg: Msg) -> str | None:
    return msg.headers.get("Status") if msg.headers and not msg.data else None


class NatsDelivery(Delivery):
    """A message leased from a JetStream consumer; settle calls are fenced locally."""

    __slots__ = ("_broker", "_deadline", "_msg", "_seq", "_token", "max_deliveries")

    def __init__(
        self,
        broker: NatsBroker,
        msg: Msg,
        queue: str,
        priority: int,
        *,
        count: int,
        max_deliveries: int,
    ) -> None:
        mid = _untoken(msg.subject.rsplit(".", 1)[1])
        super().__init__(mid, queue, msg.data, priority, count)
        self._broker = broker
        self._msg = msg
        self._seq = msg.metadata.sequence.stream
        self.max_deliveries = max_deliveries
        self._token = broker._lease_out(self._seq)
        self._deadline = time.monotonic() + broker.lease

    @property
    def lease(self) -> float | None:
        """The consumers' ack wait."""
        return self._broker.lease

    def _claim(self, final: bool) -> bool:
        # A safety margin keeps a settle call from racing the server's redelivery.
        margin = self._broker.lease * 0.05
        if time.monotonic() > self._deadline - margin:
            return False
        return self._broker._lease_held(self._seq, self._token, release=final)

    async def ack(self) -> bool:
        """Remove the message."""
        if not self._claim(True):
            return False
        await self._broker._ack(self._msg)
        return True

    async def nack(self, *, requeue: bool = True) -> bool:
        """Republish uncounted (requeue) or drop."""
        if not self._claim(True):
            return False
        if requeue:
            await self._broker._republish(
                self._msg,
                self.body,
                base=self.delivery_count - 1,
                max_deliveries=self.max_deliveries,
                eta=None,
                dedup=f"r{self._seq}.{self.delivery_count}",
            )
        await self._broker._ack(self._msg)
        return True

    async def retry(self, body: bytes, delay: float, *, max_deliveries: int = 1) -> bool:
        """Publish the replacement (to the delay stream if ``delay``), then ack this one."""
        if not self._claim(True):
            return False
        eta = time.time() + delay if delay > 0 else None
        await self._broker._republish(
            self._msg,
            body,
            base=0,
            max_deliveries=max(1, max_deliveries),
            eta=eta,
            dedup=f"t{self._seq}.{self.delivery_count}",
        )
        await self._broker._ack(self._msg)
        return True

    async def touch(self) -> bool:
        """In-progress ack: the server restarts the ack-wait timer."""
        if not self._claim(False):
            return False
        await self._broker._call(self._msg.in_progress())
        self._deadline = time.monotonic() + self._broker.lease
        return True

    async def dead_letter(self, reason: str, error: str | None = None) -> bool:
        """Copy to the DLQ stream with the reason, then ack."""
        if not self._claim(True):
            return False
        await self._broker._bury(
            self._msg,
            self.queue,
            self.priority,
            count=self.delivery_count,
            max_deliveries=self.max_deliveries,
            reason=reason,
            error=error,
        )
        return True


class NatsBroker(Broker, BrokerAdmin):
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
        parsed = parse_url(url, "broker")
        if parsed.scheme != "nats":
            raise ConfigError(f"NatsBroker needs a nats:// URL, got {parsed.masked!r}")
        if not prefix:
            raise ConfigError(f"{parsed.masked}: prefix must not be empty")
        self.url = url
        self._masked = parsed.masked
        self._server = parsed.without_query()
        self.lease = float(lease)
        self.connect_timeout = float(connect_timeout)
        self.root = subject_token(prefix)
        name = stream_name(prefix)
        self.work, self.delays, self.dlq = (f"TF_{name}_WORK", f"TF_{name}_DELAY", f"TF_{name}_DLQ")
        self.state_bucket = f"TF_{name}_STATE"
        self._nc: Client | None = None
        self._subs: list[Any] = []
        self._pullers: dict[tuple[str, str], _Puller] = {}
        self._tokens = itertools.count(1)
        self._leases: dict[int, int] = {}
        self._declared: set[str] = set()
        self._limits: dict[str, int] = {}
        self._wakers: list[asyncio.Future[None]] = []
        self._due: list[float] = []
        self._lease_ends: list[float] = []
        self._known_empty: set[tuple[str, int]] = set()
        self._level_gen: dict[tuple[str, int], int] = {}
        self._rescan = True
        self._last_scan = 0.0
        self._delay_dirty = True
        self._last_delay_pull = 0.0
        self._paused: dict[str, tuple[bool, float]] = {}
        self._control: list[dict[str, Any]] = []
        self._control_base = 0
        self._control_cursors: dict[int, int] = {}
        self._control_wakers: list[asyncio.Future[None]] = []
        self._background: set[asyncio.Task[Any]] = set()

    @classmethod
    def from_url(cls, url: str, *, clock: Clock | None = None) -> NatsBroker:
        """Build from ``nats://host:port?prefix=..&lease=..&connect_timeout=..``.

        ``max_age`` is accepted for the result store sharing the URL.
        """
        parsed = parse_url(url, "broker")
        reject_unknown(parsed, {"prefix", "lease", "connect_timeout", "max_age"})
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
        nc, self._nc = self._nc, None
        for task in list(self._background):
            task.cancel()
        self._wake_all()
        self._wake_control()
        if nc is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(nc.drain(), 5.0)
            with contextlib.suppress(Exception):
                await nc.close()
        self._declared.clear()
        self._pullers.clear()

    def _conn(self) -> Client:
        if self._nc is None:
            raise BrokerError(f"NATS broker {self._masked} is not connected")
        return self._nc

    async def _call(self, coro: Any, timeout: float = _API_TIMEOUT) -> Any:
        """Await a client call; client errors become BrokerError naming the URL."""
        try:
            return await asyncio.wait_for(coro, timeout)
        except (BrokerError, QueueFull, asyncio.CancelledError):
            raise
        except Exception as exc:
            raise BrokerError(f"NATS {self._masked}: {type(exc).__name__}: {exc}") from exc

    async def _api(self, op: str, payload: dict[str, Any]) -> dict[str, Any]:
        """A raw JetStream API request (``op`` like ``STREAM.PURGE.<name>``)."""
        msg = await self._call(
            self._conn().request(
                f"$JS.API.{op}", json.dumps(payload).encode(), timeout=_API_TIMEOUT
            )
        )
        resp: dict[str, Any] = json.loads(msg.data)
        error = resp.get("error")
        if error:
            if error.get("code") == 404:
                raise NotFoundError(code=404, description=error.get("description"))
            raise BrokerError(f"NATS {self._masked}: {op}: {error.get('description')}")
        return resp

    async def _ensure_stream(self, name: str, subject: str, retention: str) -> None:
        try:
            await self._api(f"STREAM.INFO.{name}", {})
        except NotFoundError:
            await self._api(
                f"STREAM.CREATE.{name}",
                {
                    "name": name,
                    "subjects": [subject],
                    "retention": retention,
                    "storage": "file",
                    "discard": "old",
                    "duplicate_window": 120_000_000_000,
                    "num_replicas": 1,
                },
            )

    async def _ensure_consumer(
        self, stream: str, durable: str, subject: str, ack_wait: float
    ) -> None:
        await self._api(
            f"CONSUMER.DURABLE.CREATE.{stream}.{durable}",
            {
                "stream_name": stream,
                "config": {
                    "durable_name": durable,
                    "filter_subject": subject,
                    "ack_policy": "explicit",
                    "deliver_policy": "all",
                    "ack_wait": int(ack_wait * 1e9),
                    "max_deliver": -1,
                    "max_ack_pending": -1,
                    "max_waiting": 4096,
                },
            },
        )

    def _consumer(self, queue: str, level: int) -> str:
        return f"{stream_name(queue)}_p{level}"

    async def declare(self, queue: str, *, max_length: int | None = None) -> None:
        """Create the queue's ten priority consumers; remember ``max_length`` locally."""
        if max_length is not None:
            self._limits[queue] = max_length
        else:
            self._limits.pop(queue, None)
        await self._ensure_queue(queue)

    async def _ensure_queue(self, queue: str) -> None:
        if queue in self._declared:
            return
        qt = subject_token(queue)
        await asyncio.gather(
            *(
                self._ensure_consumer(
                    self.work,
                    self._consumer(queue, level),
                    f"{self.root}.q.{qt}.p{level}.*",
                    self.lease,
                )
                for level in _LEVELS
            )
        )
        self._declared.add(queue)

    # -- publishing ------------------------------------------------------------------
    def _work_subject(self, queue: str, priority: int, mid: str) -> str:
        return f"{self.root}.q.{subject_token(queue)}.p{priority}.{subject_token(mid)}"

    def _delay_subject(self, queue: str, mid: str) -> str:
        return f"{self.root}.d.{subject_token(queue)}.{subject_token(mid)}"

    def _route(
        self, queue: str, priority: int, mid: str, eta: float | None, headers: dict[str, str]
    ) -> str:
        if eta is not None and eta > time.time():
            headers["Tf-Eta"] = repr(eta)
            headers["Tf-Pri"] = str(priority)
            return self._delay_subject(queue, mid)
        return self._work_subject(queue, priority, mid)

    async def publish(self, messages: Sequence[Message]) -> None:
        """Publish all of ``messages``; on a failure, purge the ones already written."""
        if not messages:
            return
        self._conn()
        await self._check_room(messages)
        js = self._conn().jetstream()
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
                queue = _untoken(parts[2])
                await self._delete(self.work, seq, self._consumer(queue, int(parts[3][1:])))
            else:
                await self._delete(self.delays, seq, "delay")

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

    async def _notify(self, delayed: bool, levels: set[tuple[str, int]]) -> None:
        """Tell every fetcher (this process at once, others over core NATS) what changed."""
        self._mark(delayed, levels)
        payload = json.dumps({"d": delayed, "l": sorted(levels)}).encode()
        with contextlib.suppress(Exception):
            await self._conn().publish(f"{self.root}.n", payload)

    def _mark(self, delayed: bool, levels: Any) -> None:
        self._delay_dirty = self._delay_dirty or delayed
        for queue, level in levels:
            key = (str(queue), int(level))
            self._level_gen[key] = self._level_gen.get(key, 0) + 1
            self._known_empty.discard(key)
        self._wake_all()

    async def _republish(
        self,
        msg: Msg,
        body: bytes,
        *,
        base: int,
        max_deliveries: int,
        eta: float | None,
        dedup: str,
    ) -> None:
        parts = msg.subject.split(".")
        work = parts[1] == "q"
        queue, mid = _untoken(parts[2]), _untoken(parts[-1])
        priority = int(parts[3][1:]) if work else int((msg.headers or {}).get("Tf-Pri", "0"))
        headers = {
            "Nats-Msg-Id": f"{mid}.{dedup}",
            "Tf-Max": str(max_deliveries),
            "Tf-Base": str(max(0, base)),
        }
        subject = self._route(queue, priority, mid, eta, headers)
        js = self._conn().jetstream()
        await self._call(js.publish(subject, body, headers=headers))
        await self._notify(eta is not None, set() if eta is not None else {(queue, priority)})

    async def _ack(self, msg: Msg) -> None:
        await self._call(msg.ack())

    async def _bury(
        self,
        msg: Msg,
        queue: str,
        priority: int,
        *,
        count: int,
        max_deliveries: int,
        reason: str,
        error: str | None,
    ) -> None:
        mid = _untoken(msg.subject.rsplit(".", 1)[1])
        headers = {
            "Tf-Reason": reason,
            "Tf-Error": json.dumps(error),
            "Tf-Count": str(count),
            "Tf-Pri": str(priority),
            "Tf-Max": str(max_deliveries),
            "Tf-At": repr(time.time()),
            "Nats-Msg-Id": f"{mid}.x{msg.metadata.sequence.stream}",
        }
        subject = f"{self.root}.dlq.{subject_token(queue)}.{subject_token(mid)}"
        await self._call(self._conn().jetstream().publish(subject, msg.data, headers=headers))
        await self._ack(msg)

    # -- leases ----------------------------------------------------------------------
    def _lease_out(self, seq: int) -> int:
        token = next(self._tokens)
        self._leases[seq] = token
        if len(self._lease_ends) < 10_000:
            heapq.heappush(self._lease_ends, time.monotonic() + self.lease)
        if len(self._leases) > 100_000:  # abandoned leases of redelivered messages
            for old in list(self._leases)[:50_000]:
                del self._leases[old]
        return token

    def _lease_held(self, seq: int, token: int, *, release: bool) -> bool:
        if self._leases.get(seq) != token:
            return False
        if release:
            del self._leases[seq]
        return True

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

    def _until_due(self) -> float:
        """Seconds until something the server holds may become deliverable."""
        now, mono = time.time(), time.monotonic()
        nxt = self._last_delay_pull + _DELAY_POLL - mono
        if self._due:
            nxt = min(nxt, self._due[0] - now + 0.002)
        # A lease this process handed out may run out: the server then redelivers.
        while self._lease_ends and self._lease_ends[0] < mono:
            heapq.heappop(self._lease_ends)
            self._rescan = True
        if self._lease_ends:
            nxt = min(nxt, self._lease_ends[0] - mono + 0.01)
        return max(0.005, nxt)

    async def _take(self, queues: Sequence[str], limit: int) -> list[Delivery]:
        if limit <= 0:
            return []
        await self._promote_due()
        if self._rescan or time.monotonic() - self._last_scan >= _RESCAN:
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
            await self._ensure_queue(queue)
            for level in _LEVELS:
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
        headers = msg.headers or {}
        count = msg.metadata.num_delivered + int(headers.get("Tf-Base", "0"))
        max_deliveries = int(headers.get("Tf-Max", "1"))
        if count > max_deliveries:
            await self._bury(
                msg,
                queue,
                level,
                count=count - 1,
                max_deliveries=max_deliveries,
                reason="worker_lost",
                error="lease expired",
            )
            return None
        return NatsDelivery(self, msg, queue, level, count=count, max_deliveries=max_deliveries)

    async def _pull(self, stream: str, consumer: str, batch: int) -> list[Msg]:
        """A no-wait pull: whatever is available now, up to ``batch``."""
        puller = self._pullers.get((stream, consumer))
        if puller is None:
            puller = self._pullers[(stream, consumer)] = _Puller(self, stream, consumer)
        return await puller.pull(batch)

    async def _requeue_orphan(self, msg: Msg) -> None:
        if msg.subject.split(".")[1] == "d":
            await msg.nak()
            return
        base = int((msg.headers or {}).get("Tf-Base", "0")) + msg.metadata.num_delivered - 1
        await self._republish(
            msg,
            msg.data,
            base=base,
            max_deliveries=int((msg.headers or {}).get("Tf-Max", "1")),
            eta=None,
            dedup=f"o{msg.metadata.sequence.stream}",
        )
        await msg.ack()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _promote_due(self) -> None:
        """Move due delayed messages to their work subjects; nak the rest with a delay."""
        now_mono = time.monotonic()
        due = bool(self._due) and self._due[0] <= time.time()
        if not (self._delay_dirty or due or now_mono - self._last_delay_pull >= _DELAY_POLL):
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
        headers = msg.headers or {}
        eta = float(headers.get("Tf-Eta", "0"))
        wait = eta - time.time()
        if wait > 0.001:
            await self._call(msg.nak(delay=wait))
            heapq.heappush(self._due, eta)
            return
        await self._republish(
            msg,
            msg.data,
            base=int(headers.get("Tf-Base", "0")),
            max_deliveries=int(headers.get("Tf-Max", "1")),
            eta=None,
            dedup=f"d{msg.metadata.sequence.stream}",
        )
        while self._due and self._due[0] <= eta:
            heapq.heappop(self._due)
        await self._ack(msg)

    # -- wake-ups --------------------------------------------------------------------
    def _wake_all(self) -> None:
        wakers, self._wakers = self._wakers, []
        for fut in wakers:
            if not fut.done():
                fut.set_result(None)

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

    async def _delete(self, stream: str, seq: int, consumer: str) -> bool:
        # By sequence, never a filtered purge, and followed by a consumer info request:
        # 2.9 consumers otherwise keep counting the deleted message as pending, and
        # their no-wait pulls go unanswered.
        try:
            resp = await self._api(f"STREAM.MSG.DELETE.{stream}", {"seq": seq, "no_erase": True})
        except (NotFoundError, BrokerError):
            return False
        with contextlib.suppress(NotFoundError, BrokerError):
            await self._api(f"CONSUMER.INFO.{stream}.{consumer}", {})
        return bool(resp.get("success"))

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

    # -- admin -----------------------------------------------------------------------
    async def _level_infos(self, queue: str) -> list[dict[str, Any]]:
        await self._ensure_queue(queue)
        return list(
            await asyncio.gather(
                *(
                    self._api(f"CONSUMER.INFO.{self.work}.{self._consumer(queue, level)}", {})
                    for level in _LEVELS
                )
            )
        )

    async def _count(self, stream: str, subject: str) -> int:
        resp = await self._api(f"STREAM.INFO.{stream}", {"subjects_filter": subject})
        subjects = resp.get("state", {}).get("subjects") or {}
        return sum(int(n) for n in subjects.values())

    async def depth(self, queue: str) -> dict[str, int]:
        """Counts from consumer info (ready, inflight) and subject counts (scheduled, dead)."""
        qt = subject_token(queue)
        infos = await self._level_infos(queue)
        return {
            "ready": sum(int(i["num_pending"]) for i in infos),
            "scheduled": await self._count(self.delays, f"{self.root}.d.{qt}.*"),
            "inflight": sum(int(i["num_ack_pending"]) for i in infos),
            "dead": await self._count(self.dlq, f"{self.root}.dlq.{qt}.*"),
        }

    async def _scan(
        self, stream: str, subject: str, start: int, limit: int
    ) -> list[dict[str, Any]]:
        """Stored messages on ``subject`` from sequence ``start``, oldest first."""
        out: list[dict[str, Any]] = []
        while len(out) < limit:
            try:
                resp = await self._api(
                    f"STREAM.MSG.GET.{stream}", {"seq": start, "next_by_subj": subject}
                )
            except NotFoundError:
                break
            out.append(resp["message"])
            start = int(resp["message"]["seq"]) + 1
        return out

    async def peek(self, queue: str, limit: int = 10) -> list[bytes]:
        """Next undelivered bodies, highest level first (not removed)."""
        import base64

        qt = subject_token(queue)
        out: list[bytes] = []
        for level, info in zip(_LEVELS, await self._level_infos(queue), strict=True):
            start = int(info["delivered"]["stream_seq"]) + 1
            for raw in await self._scan(
                self.work, f"{self.root}.q.{qt}.p{level}.*", start, limit - len(out)
            ):
                out.append(base64.b64decode(raw.get("data") or ""))
            if len(out) >= limit:
                break
        return out

    async def purge(self, queue: str) -> int:
        """Drop the queue's ready and scheduled messages; returns how many."""
        await self._ensure_queue(queue)
        count = 0
        for level in _LEVELS:
            while True:
                msgs = await self._pull(self.work, self._consumer(queue, level), 256)
                for msg in msgs:
                    await self._ack(msg)
                count += len(msgs)
                if len(msgs) < 256:
                    break
        later = await self._scan(
            self.delays, f"{self.root}.d.{subject_token(queue)}.*", 1, 10_000_000
        )
        for raw in later:
            count += await self._delete(self.delays, int(raw["seq"]), "delay")
        return count

    async def _set_paused(self, queue: str, paused: bool) -> None:
        kv = await self._call(self._conn().jetstream().key_value(self.state_bucket))
        key = f"paused.{stream_name(queue)}"
        await self._call(kv.put(key, b"1") if paused else kv.put(key, b"0"))
        self._paused[queue] = (paused, time.monotonic())
        payload = json.dumps({"queue": queue, "paused": paused}).encode()
        await self._call(self._conn().publish(f"{self.root}.pause", payload))
        self._wake_all()

    async def pause(self, queue: str) -> None:
        """Stop delivering ``queue`` in every process (flag in KV, change broadcast)."""
        await self._set_paused(queue, True)

    async def resume(self, queue: str) -> None:
        """Deliver ``queue`` again."""
        await self._set_paused(queue, False)

    async def _on_pause(self, msg: Msg) -> None:
        with contextlib.suppress(ValueError, KeyError, TypeError):
            change = json.loads(msg.data)
            self._paused[str(change["queue"])] = (bool(change["paused"]), time.monotonic())
            self._wake_all()

    async def _is_paused(self, queue: str) -> bool:
        cached = self._paused.get(queue)
        if cached is not None and time.monotonic() - cached[1] < _PAUSE_CACHE:
            return cached[0]
        kv = await self._call(self._conn().jetstream().key_value(self.state_bucket))
        try:
            entry = await kv.get(f"paused.{stream_name(queue)}")
            paused = bool(entry.value == b"1")
        except Exception:
            paused = False
        self._paused[queue] = (paused, time.monotonic())
        return paused

    async def dead_letters(self, queue: str, limit: int = 100) -> list[DeadLetter]:
        """The queue's dead letters, oldest first."""
        raws = await self._scan(self.dlq, f"{self.root}.dlq.{subject_token(queue)}.*", 1, limit)
        return [_dead_letter(raw, queue) for raw in raws]

    async def replay(self, queue: str, ids: Sequence[str] | None = None) -> int:
        """Republish dead letters (all, or ``ids``) with a fresh budget; remove them."""
        wanted = set(ids) if ids is not None else None
        raws = await self._scan(self.dlq, f"{self.root}.dlq.{subject_token(queue)}.*", 1, 1_000_000)
        js = self._conn().jetstream()
        count = 0
        for raw in raws:
            dead = _dead_letter(raw, queue)
            if wanted is not None and dead.id not in wanted:
                continue
            headers = {
                "Nats-Msg-Id": f"{dead.id}.y{raw['seq']}",
                "Tf-Max": str(dead.extra.get("max_deliveries", 1)),
            }
            subject = self._work_subject(queue, int(dead.extra.get("priority", 0)), dead.id)
            await self._call(js.publish(subject, dead.body, headers=headers))
            await self._api(f"STREAM.MSG.DELETE.{self.dlq}", {"seq": int(raw["seq"])})
            count += 1
        if count:
            await self._notify(False, {(queue, level) for level in _LEVELS})
        return count


def _dead_letter(raw: dict[str, Any], queue: str) -> DeadLetter:
    import base64

    headers: dict[str, str] = {}
    if raw.get("hdrs"):
        lines = base64.b64decode(raw["hdrs"]).decode().split("\r\n")[1:]
        for line in lines:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip()] = value.strip()
    return DeadLetter(
        id=_untoken(str(raw["subject"]).rsplit(".", 1)[1]),
        queue=queue,
        body=base64.b64decode(raw.get("data") or ""),
        reason=headers.get("Tf-Reason", ""),
        error=json.loads(headers.get("Tf-Error", "null")),
        failed_at=float(headers.get("Tf-At", "0")),
        delivery_count=int(headers.get("Tf-Count", "0")),
        extra={
            "priority": int(headers.get("Tf-Pri", "0")),
            "max_deliveries": int(headers.get("Tf-Max", "1")),
        },
    )
