"""The RabbitMQ broker, through kombu (``amqp://``, ``amqps://``; extra ``taskflow-queue[amqp]``).

Design
------
kombu and py-amqp are synchronous and their connections are not thread-safe. The broker
runs one dedicated I/O thread per instance (:mod:`taskflow.brokers._kombu_io`) that owns
the connection and every channel; coroutines hand it functions and await their results
through asyncio futures, and the thread waits in ``select`` on the socket and a wake-up
pipe. The thread also sends heartbeats (kombu ``heartbeat=`` and ``heartbeat_check`` on
every turn), and when the connection drops it reconnects with exponential backoff (0.1 s
up to 5 s) and starts the consumers of waiting fetches again.

Topology (see :mod:`taskflow.brokers._kombu_topology`): per task queue a durable classic
work queue with ``x-max-priority: 9`` (strict priority 0-9, FIFO among equals), a
dead-letter queue, and the delay levels.

* **Fetch** reads a queue without a consumer with ``basic.get`` (one round trip per
  message). A fetch that fills its ``max_messages`` that way (a backlog), or that waits on
  the queue, starts a consumer on it with a prefetch of twice the room asked
  (``PREFETCH_FACTOR``), and later fetches hand out what the consumer was pushed, without
  a round trip per message. RabbitMQ
  pushes the highest priority it holds first; the process hands out what it was pushed
  highest priority first, FIFO among equals, and queue by queue in the order asked. So
  strict priority holds for everything still in RabbitMQ: a message published later with a
  higher priority waits behind at most the prefetch of lower ones already pushed to this
  process (and, across queues, a later queue's pushed messages may go out while an earlier
  queue's are still on the wire). A fetch that finds nothing waits for the first push
  (no polling). A consumer stops when its queue is paused, when no fetch asked for its
  queue for ``CONSUMER_IDLE`` seconds, and before an operator sweep of its queue (purge,
  peek, cancel); what it was pushed and nobody took is then published again uncounted (at
  the end of its priority) and acked.
* **Publish** uses publisher confirms with a timeout (``confirm_timeout``) on every
  message: a nack is a :class:`~taskflow.errors.BrokerError`, and so is a confirm that
  does not come (the connection is then dropped and made again). Nothing is reported as
  sent that the broker did not confirm.
* **Sizes** are checked before a publish: a body over ``max_message_size`` (the server's,
  128 MiB by default as on RabbitMQ 3.8-3.13) less :data:`HEADER_ROOM` raises
  :class:`~taskflow.errors.PayloadError` and nothing is published. RabbitMQ closes the
  connection of a publish over its limit, which would drop every delivery it holds.
* **Delays** (countdown, eta, retry backoff) are held by RabbitMQ, never in a worker's
  memory: a binary cascade of dead-letter TTL queues, level ``k`` holding ``2**k`` ms, a
  message going through the levels of the set bits of its remaining delay, routed by its
  own headers. Precise to a few milliseconds per hop at any delay up to about 8 years, and
  a long delay never holds up a short one (each level has one fixed TTL).
* **Acks** go on the channel that delivered the message. The acks made in one turn of the
  event loop reach the I/O thread as one call and RabbitMQ as one write: one ``basic.ack``
  with ``multiple`` set for the run of them that starts at the channel's lowest unacked
  delivery tag, one ``basic.ack`` each for the rest. ``multiple`` covers only tags that are
  all being acked in that call: any other unacked delivery of the channel (pushed and not
  taken, running, redelivered and not yet put back, one whose hand-back failed) ends the
  run (see :mod:`taskflow.brokers._kombu_io`). Each
  connection has a generation; a delivery settles only on the connection that delivered
  it, so after a reconnect a stale ack is never sent on a new channel: it returns
  ``False`` (RabbitMQ has put the message back already).
* **Leases**: AMQP has no lease renewal on the server. RabbitMQ redelivers a message when
  the connection (or channel) that holds it closes, and closes a channel whose delivery
  stays unacked longer than the server's ``consumer_timeout`` (30 minutes by default on
  3.10 and 3.12): this broker then reconnects and RabbitMQ delivers the message again,
  counted as a lost delivery, so a task must finish well within ``consumer_timeout``
  (raise the server's setting for longer tasks; ``consumer_timeout=`` here tells the
  broker what the server uses, and ``lease`` must be shorter). On top of that, this
  broker keeps a lease per delivery in the process: a delivery not settled or renewed
  (:meth:`touch`) within ``lease`` seconds is handed back (published again with its
  delivery count) -- a worker whose event loop hangs loses its messages as on Redis or
  NATS.
* **Lost deliveries** are counted like on Redis and NATS (``App(max_deliveries=)``):
  RabbitMQ 3.10 classic queues do not count redeliveries, so the count lives in the
  ``tf-count`` header. A message RabbitMQ flags ``redelivered`` (its previous holder's
  connection closed while it was unsettled) is not handed out: it is published again
  with ``tf-count`` + 1 and acked (or dead-lettered ``worker_lost`` once the count
  reaches its ``max_deliveries``), and the copy is handed out. So every delivery lost to a
  dead worker, a cut connection or the ``consumer_timeout`` counts, and so does one
  prefetched by a worker that died before starting it. The copy goes to the end of its
  priority in the queue.
* **Dead letters** are messages in a per-queue dead-letter queue with the reason, error,
  time and delivery count in headers; RabbitMQ's ``x-death`` headers and the routing
  headers are stripped before any message is published again.

Operator actions (:class:`~taskflow.brokers._kombu_admin.KombuAdmin`): depth, peek,
purge, cancel, dead letters and replay work by sweeping a queue (see that module); pause
is a marker queue plus a notice on the control exchange; ``inflight`` counts this
process's deliveries only; listing every queue is not possible and says so.

Result store: RabbitMQ keeps no results. An app on ``amqp://`` needs ``results=`` (Redis,
NATS, SQLite); without it, fire-and-forget tasks work and anything that waits for a
result raises :class:`~taskflow.errors.ConfigError` naming the fix.

RabbitMQ versions: written and tested against 3.10. On 3.12+ classic queues are version 2
by default (same behaviour here; ``x-max-priority`` still works) and ``consumer_timeout``
stays 30 minutes. Quorum queues have no strict priority before 4.0 (4.0 has two levels,
normal and high), so this broker declares classic queues; a policy that turns them into
quorum queues loses the 0-9 order.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
import time
import weakref
from collections.abc import Sequence
from typing import Any, ClassVar
from urllib.parse import quote

import orjson

from .. import _tls
from ..clock import Clock
from ..errors import BrokerError, ConfigError
from ..urls import amqp_vhost, mask_url, parse_url, url_kwargs
from . import _kombu_topology as topo
from ._kombu_admin import KombuAdmin
from ._kombu_io import IoThread, Lease, Waiter
from .base import (
    Broker,
    Capabilities,
    DeadLetter,
    DelegatedAdmin,
    Delivery,
    FetchResult,
    Message,
    refuse_oversized,
)

__all__ = ["HEADER_ROOM", "MAX_MESSAGE_SIZE", "KombuBroker", "KombuDelivery"]

_CONTROL_KEPT = 5_000
"""Control commands kept for slow readers (the log is cut to this when twice as long)."""

CONSUMER_TIMEOUT = 1800.0
"""RabbitMQ's default ``consumer_timeout`` (3.10, 3.12): 30 minutes."""

MAX_MESSAGE_SIZE = 134_217_728
"""RabbitMQ's default ``max_message_size`` from 3.8 to 3.13 (4.0 lowered it to 16 MiB)."""
HEADER_ROOM = 65_536
"""Bytes of ``max_message_size`` a body leaves for the headers a retry or a dead letter
adds (the error text of a dead letter among them)."""


class KombuDelivery(Delivery):
    """A delivery from :class:`KombuBroker`, settled on the I/O thread."""

    __slots__ = ("_broker", "_lease")

    def __init__(self, broker: KombuBroker, lease: Lease) -> None:
        raw = lease.raw
        super().__init__(raw.id, raw.queue, raw.body, raw.priority, lease.count)
        self._broker = broker
        self._lease = lease

    @property
    def lease(self) -> float | None:
        """The in-process lease (renew with :meth:`touch`)."""
        return self._broker.lease

    async def _settle(self, action: str, **kw: Any) -> bool:
        lease = self._lease
        try:
            return await self._broker.io.call(lambda io: io.settle(lease, action, **kw))
        except BrokerError:
            if action in ("touch", "ack", "nack"):
                # The connection went away: RabbitMQ hands the message to someone else.
                return False
            raise

    async def ack(self) -> bool:
        """Acknowledge on the delivering channel; False if no longer held. The acks asked
        for in one turn of the event loop go to the I/O thread as one call."""
        return await self._broker.ack(self._lease)

    async def nack(self, *, requeue: bool = True) -> bool:
        """Hand back uncounted (published again, then acked) or drop."""
        return await self._settle("requeue" if requeue else "ack")

    async def retry(self, body: bytes, delay: float, *, max_deliveries: int = 1) -> bool:
        """Publish ``body`` due in ``delay`` s (through the delay cascade), then ack."""
        return await self._settle(
            # Due from now, not from when the I/O thread gets to it.
            "retry",
            body=body,
            due=time.time() + max(0.0, delay),
            max_deliveries=max_deliveries,
        )

    async def touch(self) -> bool:
        """Renew the in-process lease; False once lost."""
        return await self._settle("touch")

    async def dead_letter(self, reason: str, error: str | None = None) -> bool:
        """Publish to the queue's dead-letter queue, then ack."""
        return await self._settle("dead", reason=reason, error=error)


class KombuBroker(Broker, DelegatedAdmin):
    """RabbitMQ (AMQP 0-9-1) through kombu; see the module docstring.

    ``prefix``: namespace of every exchange and queue. ``vhost``: the RabbitMQ virtual host
    (default: the URL's path, as Celery writes it -- ``amqp://host:5672//`` or no path for
    ``/``, ``amqp://host:5672/shop`` for ``shop``; the option wins over the path).
    ``lease``: seconds a delivery is held without :meth:`~KombuDelivery.touch` before this
    process hands it back.
    ``heartbeat``: AMQP heartbeat in seconds. ``confirm_timeout``: seconds to wait for a
    publisher confirm. ``consumer_timeout``: the server's ``consumer_timeout`` in seconds
    (default 1800, RabbitMQ's default); ``lease`` must be shorter. ``max_message_size``:
    the server's ``max_message_size`` in bytes (default 128 MiB; 16 MiB is RabbitMQ 4.0's
    default). TLS and credentials: the options every backend takes (``tls_ca_file``,
    ``password_file``, ...).
    """

    capabilities: ClassVar[Capabilities] = Capabilities(blocking_publish=True)

    def __init__(
        self,
        url: str = "amqp://guest:guest@127.0.0.1:5672//",
        *,
        prefix: str = "taskflow",
        vhost: str | None = None,
        lease: float = 30.0,
        heartbeat: float = 30.0,
        connect_timeout: float = 5.0,
        confirm_timeout: float = 10.0,
        consumer_timeout: float = CONSUMER_TIMEOUT,
        max_message_size: int = MAX_MESSAGE_SIZE,
        tls_ca_file: str | None = None,
        tls_cert_file: str | None = None,
        tls_key_file: str | None = None,
        tls_verify: bool | None = None,
        tls_min_version: str | None = None,
        password_file: str | None = None,
        clock: Clock | None = None,
    ) -> None:
        parsed = parse_url(url, "broker")
        if parsed.scheme not in ("amqp", "amqps"):
            raise ConfigError(
                f"KombuBroker needs an amqp:// or amqps:// URL, got {mask_url(url)!r}"
            )
        where = f"broker URL {mask_url(url)!r}"
        for name, value in (
            ("lease", lease),
            ("heartbeat", heartbeat),
            ("connect_timeout", connect_timeout),
            ("confirm_timeout", confirm_timeout),
            ("consumer_timeout", consumer_timeout),
        ):
            if not isinstance(value, int | float) or not value > 0:
                raise ConfigError(f"{where}: {name} must be a positive number of seconds")
        if (
            isinstance(max_message_size, bool)
            or not isinstance(max_message_size, int)
            or max_message_size <= HEADER_ROOM
        ):
            raise ConfigError(
                f"{where}: max_message_size must be a number of bytes over {HEADER_ROOM:,}"
            )
        if lease >= consumer_timeout:
            raise ConfigError(
                f"{where}: lease ({lease}s) must be shorter than the server's "
                f"consumer_timeout ({consumer_timeout}s)"
            )
        if not prefix or any(c in prefix for c in " #*"):
            raise ConfigError(f"{where}: prefix must be a non-empty name without spaces, # or *")
        security = _tls.resolve(
            where,
            role="broker",
            scheme_tls=parsed.scheme == "amqps",
            url_password=parsed.password is not None,
            url_user=parsed.username is not None,
            given={
                "tls_ca_file": tls_ca_file,
                "tls_cert_file": tls_cert_file,
                "tls_key_file": tls_key_file,
                "tls_verify": tls_verify,
                "tls_min_version": tls_min_version,
                "password_file": password_file,
            },
            query=parsed.options,
        )
        self.url = url
        self.prefix = prefix
        self.lease = float(lease)
        self.consumer_timeout = float(consumer_timeout)
        self.max_message_size = max_message_size
        self._too_large = (
            f"a message may have on RabbitMQ at {mask_url(url)} (max_message_size "
            f"{max_message_size:,} less {HEADER_ROOM:,} for headers)"
        )
        self.names = topo.Names(prefix)
        if vhost is None:
            vhost = amqp_vhost(parsed.path)
        client_url = _client_url(parsed.without_query(), parsed.path, security.password, vhost)
        self._control_waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        # Weak keys: a finished reader's position goes with its task.
        self._control_cursors: weakref.WeakKeyDictionary[asyncio.Task[Any], int] = (
            weakref.WeakKeyDictionary()
        )
        self._control_base = 0  # commands dropped from the front of the log
        self._acks: dict[asyncio.AbstractEventLoop, list[tuple[Lease, asyncio.Future[bool]]]] = {}
        self.io = IoThread(
            client_url,
            self.names,
            lease=self.lease,
            heartbeat=float(heartbeat),
            connect_timeout=float(connect_timeout),
            confirm_timeout=float(confirm_timeout),
            ssl=_ssl_options(security, parsed.host) if security.tls else None,
            on_control=self._notify_control,
            shown=url,
        )
        self._kombu_admin = KombuAdmin(self.io, self._inflight)
        self._admin = self._kombu_admin

    @classmethod
    def from_url(cls, url: str, *, clock: Clock | None = None) -> KombuBroker:
        """Build from ``amqp://user:pass@host:5672/vhost?prefix=...&lease=...``."""
        return cls(url, **url_kwargs(url, "broker", cls), clock=clock)

    def max_hold(self) -> float | None:
        """RabbitMQ closes the channel of a delivery unacknowledged for longer than its
        ``consumer_timeout``: no task may run that long on this broker."""
        return self.consumer_timeout

    def __repr__(self) -> str:
        return f"<KombuBroker {mask_url(self.url)} prefix={self.prefix!r}>"

    # -- lifecycle -------------------------------------------------------------------
    async def connect(self) -> None:
        """Connect (within ``connect_timeout``) and start the I/O thread."""
        if self.io.running:
            return
        await asyncio.to_thread(self.io.start)

    async def close(self) -> None:
        """Hand back unhanded messages, close the connection, end the thread. Idempotent.

        Bounded: each step waits at most ``CLOSE_STEP`` seconds for the server, and a
        server that does not answer is left (the connection closed without the rest)."""
        if self.io.running:
            await asyncio.to_thread(self.io.stop)
        self._notify_control()

    # -- publishing ------------------------------------------------------------------
    async def declare(self, queue: str, *, max_length: int | None = None) -> None:
        """Declare ``queue``'s work and dead-letter queues; ``max_length`` bounds ready
        plus scheduled messages (checked before each publish by this process)."""

        def declare(io: IoThread) -> None:
            io.require()
            io.declare_queue(queue)
            if max_length is None:
                io.state.limits.pop(queue, None)
            else:
                io.state.limits[queue] = max_length

        await self.io.call(declare)

    async def publish(self, messages: Sequence[Message]) -> None:
        """Publish every message with a confirm (all or nothing for bounded queues)."""
        if not messages:
            return
        batch = list(messages)
        self._check_size(batch)
        await self.io.call(lambda io: io.publish(batch))

    def publish_blocking(self, messages: Sequence[Message]) -> None:
        """Thread-safe :meth:`publish` for code without an event loop."""
        if not messages:
            return
        batch = list(messages)
        self._check_size(batch)
        self.io.call_blocking(lambda io: io.publish(batch), timeout=60.0)

    def _check_size(self, messages: Sequence[Message]) -> None:
        """Refuse (PayloadError, nothing published) a body the server would not take: it
        would close the connection, and every delivery this process holds with it."""
        refuse_oversized(messages, self.max_message_size - HEADER_ROOM, self._too_large)

    # -- receiving -------------------------------------------------------------------
    async def fetch(self, queues: Sequence[str], max_messages: int, timeout: float) -> FetchResult:
        """Up to ``max_messages`` deliveries, waiting up to ``timeout`` s for the first.

        One call to the I/O thread: it takes what is there and, if nothing is, registers
        this fetch to be answered by the first push (or its deadline)."""
        wanted = list(queues)
        limit = max(1, int(max_messages))
        io = self.io
        waiter: Waiter | None = None
        later: asyncio.Future[tuple[list[Lease], list[DeadLetter]]] | None = None
        if timeout > 0:
            loop = asyncio.get_running_loop()
            later = loop.create_future()
            waited = later

            def done(leases: list[Lease], lost: list[DeadLetter]) -> None:
                # On the I/O thread: answered with the other results of its turn.
                def settle() -> None:
                    if waited.done():  # the fetch was given up
                        _hand_back(io, (leases, lost))
                    else:
                        waited.set_result((leases, lost))

                io.reply(loop, settle)

            waiter = Waiter(wanted, limit, time.monotonic() + timeout, done)
        try:
            got, lost = await io.call(
                lambda io: io.fetch(wanted, limit, waiter), lambda r: _hand_back(io, r)
            )
            if not got and later is not None:
                got, more = await later
                lost = lost + more
        except BaseException:  # cancelled, or the connection went away meanwhile
            if waiter is not None and later is not None:
                waiter.finished = True
                later.cancel()  # an answer that still comes is handed back
            raise
        return FetchResult((KombuDelivery(self, lease) for lease in got), lost)

    async def cancel(self, message_id: str, queue: str) -> bool:
        """Remove a ready or scheduled message (a sweep: see ``_kombu_admin``)."""
        return await self._kombu_admin.cancel(message_id, queue)

    def _inflight(self, queue: str) -> int:
        return self.io.inflight(queue)

    async def ack(self, lease: Lease) -> bool:
        """Ack ``lease`` together with the other acks of this turn of the event loop (one
        call to the I/O thread, one write to RabbitMQ)."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[bool] = loop.create_future()
        batch = self._acks.get(loop)
        if batch is None:
            batch = self._acks[loop] = []
            loop.call_soon(self._send_acks, loop)
        batch.append((lease, fut))
        return await fut

    def _send_acks(self, loop: asyncio.AbstractEventLoop) -> None:
        batch = self._acks.pop(loop, [])
        leases = [lease for lease, _ in batch]
        self.io.post(loop, lambda io: io.ack_many(leases), lambda r, e: _acked(batch, r, e))

    # -- control ---------------------------------------------------------------------
    def _notify_control(self) -> None:
        waiters, self._control_waiters = self._control_waiters, []
        for loop, fut in waiters:
            try:
                loop.call_soon_threadsafe(_wake, fut)
            except RuntimeError:
                continue

    async def send_control(self, command: dict[str, Any]) -> None:
        """Broadcast on the ``<prefix>.control`` fanout exchange."""
        payload = orjson.dumps(command)
        await self.io.call(lambda io: io.send_control(payload))

    async def control_messages(self, timeout: float) -> list[dict[str, Any]]:
        """Commands received since the calling task's previous call."""
        key = _current_task()
        log = self.io.state.control  # appended to by the I/O thread
        cursor = self._control_cursors.setdefault(key, self._control_base + len(log))
        if cursor >= self._control_base + len(log) and timeout > 0:
            loop = asyncio.get_running_loop()
            fut: asyncio.Future[None] = loop.create_future()
            self._control_waiters.append((loop, fut))
            if cursor >= self._control_base + len(log):
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(fut), timeout)
        end = self._control_base + len(log)
        got = log[max(0, cursor - self._control_base) : end - self._control_base]
        self._control_cursors[key] = end
        if len(log) > _CONTROL_KEPT * 2:
            # A reader more than that far behind misses the oldest commands.
            del log[:_CONTROL_KEPT]
            self._control_base += _CONTROL_KEPT
        return list(got)

    def forget_control_reader(self) -> None:
        """Drop the calling task's read position."""
        self._control_cursors.pop(_current_task(), None)


def _acked(
    batch: list[tuple[Lease, asyncio.Future[bool]]],
    results: list[bool] | None,
    error: BaseException | None,
) -> None:
    """On the loop: each ack of ``batch`` gets its own answer."""
    if isinstance(error, BrokerError):
        # The connection went away: RabbitMQ hands the messages to someone else.
        results, error = None, None
    for i, (_, fut) in enumerate(batch):
        if fut.done():
            continue
        if error is not None:
            fut.set_exception(error)
        else:
            fut.set_result(bool(results[i]) if results is not None else False)


def _hand_back(io: IoThread, fetched: tuple[list[Lease], list[DeadLetter]]) -> None:
    """What a fetch took after nobody waited for it any more: the I/O thread puts the
    deliveries back uncounted, and keeps the lost ones for the next fetch to report."""
    leases, lost = fetched
    for lease in leases:
        lease.uncounted = True
        lease.deadline = 0.0

    def back(io: IoThread) -> None:
        io.state.lost.extend(lost)
        io.expire_now()

    if leases or lost:
        io.post(asyncio.get_running_loop(), back, _ignore)


def _ignore(result: Any, error: BaseException | None) -> None:
    """A result nobody needs."""


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def _current_task() -> asyncio.Task[Any]:
    task = asyncio.current_task()
    if task is None:
        raise RuntimeError("control messages are read from inside an asyncio task")
    return task


def _ssl_options(security: _tls.Security, host: str | None) -> dict[str, Any]:
    """py-amqp's TLS options (it builds its own SSL context from them): the CA file (else
    the system's), the client certificate, the least TLS version, and host name checking
    unless ``tls_verify`` is false."""
    opts: dict[str, Any] = {"tls_minimum_version": security.min_version}
    if security.ca_file is not None:
        opts["ca_certs"] = security.ca_file
    else:
        paths = ssl.get_default_verify_paths()
        for candidate in (paths.cafile, paths.openssl_cafile):
            if candidate and os.path.exists(candidate):
                opts["ca_certs"] = candidate
                break
    if security.cert_file is not None:
        opts["certfile"] = security.cert_file
        opts["keyfile"] = security.key_file
    if security.verify:
        opts["cert_reqs"] = ssl.CERT_REQUIRED
        opts["server_hostname"] = host
    else:
        opts["cert_reqs"] = ssl.CERT_NONE
    return opts


def _client_url(url: str, path: str, password: str | None, vhost: str) -> str:
    """The URL kombu connects to: ``amqps`` becomes ``amqp`` with ``ssl=`` set, a
    password from a file or the environment goes in, and ``vhost`` replaces the path."""
    scheme, rest = url.split("://", 1)
    if path and rest.endswith(path):
        rest = rest[: -len(path)]
    rest = rest.rstrip("/") + "/" + quote(vhost, safe="")
    if password is not None and "@" not in rest:
        rest = f"guest:{quote(password, safe='')}@{rest}"
    elif password is not None:
        creds, host = rest.rsplit("@", 1)
        user = creds.split(":", 1)[0]
        rest = f"{user}:{quote(password, safe='')}@{host}"
    del scheme
    return f"amqp://{rest}"
