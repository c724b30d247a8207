"""The AMQP broker's I/O thread: one kombu connection, used by that thread only.

kombu and py-amqp are synchronous and a connection is not thread-safe, so every AMQP call
runs on one dedicated thread. The event loop hands it work with :meth:`IoThread.call`
(a function run on the thread, its result set on an asyncio future); the thread waits
in ``select`` on the AMQP socket and a wake-up pipe, so a call starts at once and
deliveries are read as they arrive. Between calls the thread services heartbeats, ends
waiting fetches whose time is up and hands back deliveries whose lease ran out.

Results go back to each event loop in one hop per batch of calls, and a call wakes the
thread only when it is not already running calls.

Channels: ``work`` (basic.get, consumers with a prefetch, acks: a delivery is acked on the
channel that delivered it), ``pub`` (publisher confirms on every publish) and ``admin``
(sweeps that take messages out and put them back). Each connection has a generation
number; a delivery remembers the generation that delivered it and settles only on that
connection.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import select
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import amqp  # type: ignore[import-untyped]
from kombu import connection as _kombu_connection

from ..errors import BrokerError, QueueFull
from ..urls import mask_url
from . import _kombu_topology as topo
from .base import DeadLetter, Message

log = logging.getLogger("taskflow.broker.amqp")

PREFETCH_FACTOR = 2
"""A consumer's prefetch is this many times the room its fetch asked for: the deliveries a
worker runs and holds, plus as many again pushed ahead so that none waits for a round
trip."""

CONSUMER_IDLE = 2.0
"""Seconds a consumer stays on a queue no fetch asks for."""

T = TypeVar("T")

# kombu's Connection is only partly annotated: used through Any.
Connection: Any = _kombu_connection.Connection

# A channel error (the server closed a channel: consumer_timeout, a bad declare) leaves
# the connection in an unknown state: it is made again like a lost one.
_RECOVERABLE = (
    amqp.exceptions.ChannelError,
    OSError,
    amqp.exceptions.ConnectionError,
    amqp.exceptions.RecoverableConnectionError,
)


class Disconnected(BrokerError):
    """The connection was lost during a call."""


@dataclass(slots=True)
class Raw:
    """A message as it came off the wire, before it was handed out."""

    tag: int
    gen: int
    queue: str
    body: bytes
    priority: int
    headers: dict[str, Any]
    redelivered: bool

    @property
    def id(self) -> str:
        return str(self.headers.get(topo.H_ID, ""))


@dataclass(slots=True)
class Lease:
    """A delivery handed out by a fetch: settled once, or handed back when it expires."""

    raw: Raw
    count: int
    deadline: float
    settled: bool = False
    uncounted: bool = False
    """Handed back unstarted (the fetch that took it was gone): no delivery counted."""


@dataclass(slots=True)
class Waiter:
    """A fetch waiting for its first message."""

    queues: list[str]
    limit: int
    deadline: float
    done: Callable[[list[Lease]], None]
    finished: bool = False


@dataclass(slots=True)
class _Call:
    fn: Callable[[IoThread], Any]
    done: Callable[[Any, BaseException | None], None]


@dataclass(slots=True)
class State:
    """What survives a reconnect (the rest belongs to one connection)."""

    limits: dict[str, int] = field(default_factory=dict)
    paused: set[str] = field(default_factory=set)
    lost: list[DeadLetter] = field(default_factory=list)
    control: list[dict[str, Any]] = field(default_factory=list)


class IoThread:
    """Owns the connection; see the module docstring."""

    def __init__(
        self,
        url: str,
        names: topo.Names,
        *,
        lease: float,
        heartbeat: float,
        connect_timeout: float,
        confirm_timeout: float,
        ssl: Any = None,
        on_control: Callable[[], None] = lambda: None,
        shown: str = "",
    ) -> None:
        self.url = url
        """What kombu connects to (may hold a password from a file: never shown)."""
        self.shown = shown or url
        """The URL errors and logs name (masked)."""
        self.names = names
        self.lease = lease
        self.heartbeat = heartbeat
        self.connect_timeout = connect_timeout
        self.confirm_timeout = confirm_timeout
        self.ssl = ssl
        self.on_control = on_control
        self.state = State()
        self.gen = 0
        self.conn: Any = None
        self.work: Any = None
        self.pub: Any = None
        self.admin: Any = None
        self._declared: set[str] = set()
        self._bound: set[tuple[str, str, str]] = set()
        self._held: dict[str, deque[Raw]] = {}
        self._consumers: dict[str, str] = {}  # queue -> consumer tag
        self._prefetch: dict[str, int] = {}  # queue -> its consumer's prefetch
        self._asked: dict[str, float] = {}  # queue -> when a fetch last asked for it
        self._leases: dict[tuple[int, int], Lease] = {}
        self._waiters: list[Waiter] = []
        self._calls: deque[_Call] = deque()
        self._replies: dict[asyncio.AbstractEventLoop, list[Callable[[], None]]] = {}
        self._lock = threading.Lock()
        self._wake_r, self._wake_w = -1, -1  # a pipe while the thread runs
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._retry_at = 0.0
        self._backoff = 0.1
        self.control_queue = ""
        self.used: set[str] = set()
        """Every task queue this instance declared (for cleanup in tests and tools)."""

    # -- lifecycle (called from the event loop's thread) -----------------------------
    def start(self) -> None:
        """Connect on the calling thread (bounded), then hand the connection over."""
        self._connect()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="taskflow-amqp-io", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Hand back what is held, close the connection and end the thread."""
        if self._thread is None:
            return
        fut: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._submit(lambda io: io.shutdown(), fut)
        with contextlib.suppress(Exception):
            fut.result(timeout=self.confirm_timeout + 5)
        self._stopping = True
        self._wake()
        self._thread.join(timeout=10)
        self._thread = None
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._wake_r, self._wake_w = -1, -1

    @property
    def running(self) -> bool:
        return self._thread is not None

    # -- calls -----------------------------------------------------------------------
    async def call(
        self, fn: Callable[[IoThread], T], orphan: Callable[[T], None] | None = None
    ) -> T:
        """Run ``fn(self)`` on the I/O thread; its result (or error) comes back here.
        ``orphan`` gets a result that arrives after the caller was cancelled."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()

        def done(result: Any, error: BaseException | None) -> None:
            def settle() -> None:
                if fut.done():
                    if orphan is not None and error is None:
                        orphan(result)
                    return
                if error is not None:
                    fut.set_exception(error)
                else:
                    fut.set_result(result)

            self._reply(loop, settle)

        self._calls_append(_Call(fn, done))
        return await fut

    def _reply(self, loop: asyncio.AbstractEventLoop, settle: Callable[[], None]) -> None:
        """Run ``settle`` on ``loop``: results made on the I/O thread go back together,
        one hop to each loop per batch of calls."""
        if threading.current_thread() is self._thread:
            self._replies.setdefault(loop, []).append(settle)
            return
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
            loop.call_soon_threadsafe(settle)

    def _flush_replies(self) -> None:
        replies, self._replies = self._replies, {}
        for loop, settles in replies.items():
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                loop.call_soon_threadsafe(_run_all, settles)

    def call_blocking(self, fn: Callable[[IoThread], T], timeout: float) -> T:
        """Run ``fn(self)`` on the I/O thread from any other thread."""
        fut: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._submit(fn, fut)
        return fut.result(timeout=timeout)

    def _submit(self, fn: Callable[[IoThread], Any], fut: concurrent.futures.Future[Any]) -> None:
        def done(result: Any, error: BaseException | None) -> None:
            if error is not None:
                fut.set_exception(error)
            else:
                fut.set_result(result)

        self._calls_append(_Call(fn, done))

    def _calls_append(self, call: _Call) -> None:
        if self._thread is None or self._stopping:
            call.done(None, BrokerError(f"AMQP broker {mask_url(self.shown)} is not connected"))
            return
        with self._lock:
            idle = not self._calls
            self._calls.append(call)
        if idle:  # else the thread has not emptied the queue yet: it runs this call too
            self._wake()

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")

    # -- the thread ------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stopping:
            try:
                if self.conn is None:
                    self._reconnect()
                self._run_calls()
                self._flush_replies()
                self._tick()
                self._wait_io()
            except _RECOVERABLE as exc:
                self._lost_connection(exc)
            except Exception:  # the thread must survive anything
                log.exception("AMQP I/O thread: unexpected error")
                self._lost_connection(None)
            finally:
                self._flush_replies()
        self._close_connection()
        with self._lock:
            left, self._calls = list(self._calls), deque()
        for call in left:
            call.done(None, BrokerError(f"AMQP broker {mask_url(self.shown)} is closed"))
        self._flush_replies()

    def _run_calls(self) -> None:
        while True:
            with self._lock:
                if not self._calls:
                    return
                call = self._calls.popleft()
            try:
                result = call.fn(self)
            except _RECOVERABLE as exc:
                call.done(
                    None, Disconnected(f"AMQP connection to {mask_url(self.shown)} lost: {exc}")
                )
                raise
            except BaseException as exc:  # handed to the caller
                call.done(None, exc)
            else:
                call.done(result, None)

    def _wait_io(self) -> None:
        timeout = min(1.0, self.heartbeat / 4)  # heartbeat_check runs at least that often
        now = time.monotonic()
        for waiter in self._waiters:
            timeout = min(timeout, waiter.deadline - now)
        for lease in self._leases.values():
            timeout = min(timeout, lease.deadline - now)
        if self.conn is None:
            timeout = min(timeout, self._retry_at - now)
        timeout = max(0.0, timeout)
        fds: list[Any] = [self._wake_r]
        sock = self._sock()
        if sock is not None:
            fds.append(sock)
        readable, _, _ = select.select(fds, [], [], timeout)
        if self._wake_r in readable:
            with contextlib.suppress(OSError):
                os.read(self._wake_r, 4096)
        if sock is not None and (sock in readable or self._pending(sock)):
            self._drain()

    def _sock(self) -> Any:
        if self.conn is None:
            return None
        transport = getattr(self.conn.connection, "transport", None)
        return getattr(transport, "sock", None)

    @staticmethod
    def _pending(sock: Any) -> bool:
        pending = getattr(sock, "pending", None)
        return bool(pending()) if pending is not None else False

    def _drain(self) -> None:
        assert self.conn is not None
        while True:
            try:
                self.conn.drain_events(timeout=0.005)
            except TimeoutError:
                return
            except socket.timeout:  # noqa: UP041 - older Pythons alias differently
                return
            sock = self._sock()
            if sock is None:
                return
            readable, _, _ = select.select([sock], [], [], 0)
            if not readable and not self._pending(sock):
                return

    def _tick(self) -> None:
        if self.conn is not None:
            self.conn.heartbeat_check()
            self._serve_waiters()
            self._expire_leases()
        now = time.monotonic()
        for waiter in list(self._waiters):
            if waiter.deadline <= now:
                self._finish(waiter, [])
        self.sync_consumers()

    # -- connection ------------------------------------------------------------------
    def _connect(self) -> None:
        conn = Connection(
            self.url,
            heartbeat=self.heartbeat,
            connect_timeout=self.connect_timeout,
            ssl=self.ssl,
            transport_options={
                "confirm_publish": False,
                # Shown by ``rabbitmqctl list_connections client_properties``.
                "client_properties": {
                    "connection_name": f"taskflow {self.names.prefix} pid {os.getpid()}"
                },
            },
        )
        try:
            conn.connect()
        except Exception as exc:  # any client error becomes a BrokerError
            with contextlib.suppress(Exception):
                conn.release()
            raise BrokerError(
                f"cannot connect to the AMQP broker {mask_url(self.shown)}: {exc}"
            ) from None
        self.conn = conn
        self.gen += 1
        self.work = conn.channel()
        self.work.basic_qos(0, 1, False)
        self.pub = conn.channel()
        self.pub.confirm_select()
        self.admin = conn.channel()
        self._declared.clear()
        self._bound.clear()
        self._consumers.clear()
        self._prefetch.clear()
        self._held.clear()
        self._declare_control()
        self._backoff = 0.1

    def _reconnect(self) -> None:
        now = time.monotonic()
        if now < self._retry_at:
            return
        try:
            self._connect()
        except BrokerError as exc:
            self._retry_at = time.monotonic() + self._backoff
            log.warning("%s; retrying in %.1fs", exc, self._backoff)
            self._backoff = min(self._backoff * 2, 5.0)
            return
        log.info("AMQP broker %s: connected again", mask_url(self.shown))

    def _lost_connection(self, exc: BaseException | None) -> None:
        if self.conn is not None:
            log.warning(
                "AMQP broker %s: connection lost (%s); reconnecting",
                mask_url(self.shown),
                exc or "error",
            )
        self._close_connection()
        # Unsettled deliveries go back to the queue with the connection: fenced by gen.
        self._leases.clear()
        self._retry_at = time.monotonic() + self._backoff
        self._backoff = min(self._backoff * 2, 5.0)

    def _close_connection(self) -> None:
        conn, self.conn = self.conn, None
        self.work = self.pub = self.admin = None
        self._consumers.clear()
        self._prefetch.clear()
        self._held.clear()
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.release()

    def require(self) -> None:
        """Raise :class:`Disconnected` while there is no connection."""
        if self.conn is None:
            raise Disconnected(
                f"AMQP broker {mask_url(self.shown)} is not connected (reconnecting)"
            )

    def shutdown(self) -> None:
        """Cancel consumers and put back what was received but never handed out."""
        for waiter in list(self._waiters):
            self._finish(waiter, [])
        if self.conn is None:
            return
        for queue, tag in list(self._consumers.items()):
            with contextlib.suppress(Exception):
                self.work.basic_cancel(tag)
            del self._consumers[queue]
        self._prefetch.clear()
        with contextlib.suppress(Exception):
            self.conn.drain_events(timeout=0.05)
        for held in self._held.values():
            for raw in held:
                with contextlib.suppress(Exception):
                    self.republish(raw, self.count_of(raw) - 1)
        self._held.clear()

    # -- topology --------------------------------------------------------------------
    def _declare_control(self) -> None:
        self.work.exchange_declare(self.names.control, "fanout", durable=True, auto_delete=False)
        name, _, _ = self.work.queue_declare("", exclusive=True, auto_delete=True)
        self.work.queue_bind(name, self.names.control)
        self.control_queue = name
        self.work.basic_consume(name, callback=self._on_control, no_ack=True)

    def declare_queue(self, queue: str) -> None:
        """The work queue and dead-letter queue of ``queue`` (once per connection)."""
        if queue in self._declared:
            return
        self.work.queue_declare(
            self.names.work(queue),
            durable=True,
            auto_delete=False,
            arguments={"x-max-priority": 9},
        )
        self.work.queue_declare(self.names.dead(queue), durable=True, auto_delete=False)
        if self.exists(self.names.paused_marker(queue)):
            self.state.paused.add(queue)
        self._declared.add(queue)
        self.used.add(queue)

    def declare_level(self, queue: str, level: str) -> int:
        """Declare a delay level of ``queue``; how many messages it holds."""
        self.work.exchange_declare(
            self.names.after(level), "headers", durable=True, auto_delete=False
        )
        _, count, _ = self.work.queue_declare(
            self.names.level(queue, level),
            durable=True,
            auto_delete=False,
            arguments={
                "x-message-ttl": topo.level_ttl(level),
                "x-dead-letter-exchange": self.names.after(level),
            },
        )
        return int(count)

    def levels(self, queue: str) -> list[str]:
        """Every delay level of ``queue`` that exists: each is made on first use (by any
        process), the top levels in order, so the first missing one ends them."""
        out: list[str] = []
        for level in [str(k) for k in range(topo.LEVEL_BITS)]:
            if (queue, level, "") in self._bound or self.exists(self.names.level(queue, level)):
                out.append(level)
        for i in range(topo.TOP_LEVELS):
            level = f"t{i}"
            if (queue, level, "") not in self._bound and not self.exists(
                self.names.level(queue, level)
            ):
                break
            out.append(level)
        return out

    def exists(self, name: str) -> bool:
        """Whether a queue exists (a passive declare on the admin channel)."""
        try:
            self.admin.queue_declare(name, passive=True)
        except amqp.exceptions.NotFound:
            self.admin = self.conn.channel() if self.conn is not None else None
            return False
        return True

    def count(self, name: str) -> int:
        """Ready messages in an existing queue (0 if it does not exist)."""
        try:
            _, count, _ = self.admin.queue_declare(name, passive=True)
        except amqp.exceptions.NotFound:
            self.admin = self.conn.channel() if self.conn is not None else None
            return 0
        return int(count)

    def _ensure_path(self, queue: str, path: list[str]) -> None:
        for level in path:
            key = (queue, level, "")
            if key not in self._bound:
                self.declare_level(queue, level)
                self._bound.add(key)
        for exchange, dest, args in self.names.bindings(queue, path):
            key = (exchange, dest, str(sorted(args.items())))
            if key not in self._bound:
                self.work.queue_bind(dest, exchange, "", arguments=args)
                self._bound.add(key)

    # -- publishing ------------------------------------------------------------------
    def confirm(
        self, routing_key: str, body: bytes, priority: int, headers: dict[str, Any], mid: str
    ) -> None:
        msg = amqp.Message(
            body,
            delivery_mode=2,
            priority=priority,
            message_id=mid,
            content_type="application/octet-stream",
            application_headers=headers,
        )
        try:
            self.pub.basic_publish_confirm(
                msg, exchange="", routing_key=routing_key, confirm_timeout=self.confirm_timeout
            )
        except amqp.exceptions.MessageNacked:
            raise BrokerError(
                f"AMQP broker {mask_url(self.shown)} refused message {mid} (publisher nack)"
            ) from None
        except (TimeoutError, socket.timeout) as exc:  # noqa: UP041
            # The broker's answer never came: the message may or may not be there.
            raise OSError(f"no publisher confirm within {self.confirm_timeout}s") from exc

    def send(  # noqa: PLR0917 - one message's parts
        self,
        queue: str,
        mid: str,
        body: bytes,
        priority: int,
        headers: dict[str, Any],
        due: float | None = None,
    ) -> None:
        """Publish one message to ``queue``; through the delay cascade while ``due``
        (epoch seconds) is in the future."""
        self.declare_queue(queue)
        path: list[str] = []
        if due is not None:
            # The remaining delay is measured after declaring the levels, right before
            # the publish, so that the time declaring them takes is not added to it.
            path = topo.cascade(int((due - time.time()) * 1000))
            self._ensure_path(queue, path)
            again = topo.cascade(int((due - time.time()) * 1000))
            if again != path:
                path = again
                self._ensure_path(queue, path)
        routing_key, route = self.names.route(queue, path)
        all_headers = {**headers, **route, topo.H_ID: mid}
        if path and due is not None:
            all_headers[topo.H_DUE] = int(due * 1000)
        self.confirm(routing_key, body, priority, all_headers, mid)

    def publish(self, messages: list[Message]) -> None:
        """Publish a batch; bounded queues are checked first (all or nothing)."""
        self.require()
        want: dict[str, int] = {}
        for m in messages:
            want[m.queue] = want.get(m.queue, 0) + 1
        for queue, n in want.items():
            limit = self.state.limits.get(queue)
            if limit is not None and self.waiting(queue) + n > limit:
                task = next((m.task for m in messages if m.queue == queue and m.task), "")
                what = f" (task {task!r})" if task else ""
                raise QueueFull(f"queue {queue!r} is full: at most {limit} messages{what}")
        for m in messages:
            headers: dict[str, Any] = {topo.H_MAX: m.max_deliveries, topo.H_COUNT: 0}
            if m.task:
                headers[topo.H_TASK] = m.task
            self.send(m.queue, m.id, m.body, m.priority, headers, m.eta)

    def waiting(self, queue: str) -> int:
        """Ready plus scheduled messages of ``queue``."""
        self.declare_queue(queue)
        total = self.count(self.names.work(queue))
        for level in self.levels(queue):
            total += self.count(self.names.level(queue, level))
        return total

    def republish(self, raw: Raw, count: int, body: bytes | None = None) -> None:
        """Put ``raw`` back at the end of its queue with ``count`` deliveries made, then
        ack it (publish first: at least once, never lost)."""
        headers = {k: v for k, v in raw.headers.items() if k in _KEPT}
        headers[topo.H_COUNT] = count
        self.send(raw.queue, raw.id, raw.body if body is None else body, raw.priority, headers)
        self.work.basic_ack(raw.tag)

    def to_dead(self, raw: Raw, count: int, reason: str, error: str | None) -> DeadLetter:
        """Move ``raw`` to its queue's dead-letter queue, then ack it."""
        failed_at = time.time()
        headers = {k: v for k, v in raw.headers.items() if k in _KEPT}
        headers.update(
            {
                topo.H_COUNT: count,
                topo.H_REASON: reason,
                topo.H_FAILED: failed_at,
                topo.H_PRIORITY: raw.priority,
                topo.H_ID: raw.id,
            }
        )
        if error is not None:
            headers[topo.H_ERROR] = error
        self.declare_queue(raw.queue)
        self.confirm(self.names.dead(raw.queue), raw.body, 0, headers, raw.id)
        if raw.gen == self.gen and self.work is not None:
            self.work.basic_ack(raw.tag)
        return DeadLetter(
            id=raw.id,
            queue=raw.queue,
            body=raw.body,
            reason=reason,
            error=error,
            failed_at=failed_at,
            delivery_count=count,
        )

    def send_control(self, payload: bytes) -> None:
        self.require()
        msg = amqp.Message(payload, content_type="application/json")
        self.pub.basic_publish_confirm(
            msg, exchange=self.names.control, routing_key="", confirm_timeout=self.confirm_timeout
        )

    def _on_control(self, message: Any) -> None:
        import orjson

        try:
            command = orjson.loads(message.body)
        except orjson.JSONDecodeError:
            return
        if not isinstance(command, dict):
            return
        if command.get("tf-pause") is not None:
            queue = str(command["tf-pause"])
            if command.get("paused"):
                self.state.paused.add(queue)
            else:
                self.state.paused.discard(queue)
            return
        self.state.control.append(command)
        self.on_control()

    # -- receiving -------------------------------------------------------------------
    @staticmethod
    def count_of(raw: Raw) -> int:
        """This delivery's number: deliveries counted before, plus one lost to a dead
        consumer if RabbitMQ marks it redelivered, plus this one."""
        try:
            before = int(raw.headers.get(topo.H_COUNT, 0))
        except (TypeError, ValueError):
            before = 0
        return before + (1 if raw.redelivered else 0) + 1

    def _raw(self, queue: str, message: Any) -> Raw:
        info = message.delivery_info
        props = message.properties
        body = message.body
        if isinstance(body, str):
            body = body.encode()
        headers = dict(props.get("application_headers") or {})
        return Raw(
            tag=int(info["delivery_tag"]),
            gen=self.gen,
            queue=queue,
            body=bytes(body),
            priority=int(props.get("priority") or 0),
            headers=headers,
            redelivered=bool(info.get("redelivered")),
        )

    def _hand_out(self, raw: Raw, out: list[Lease]) -> None:
        """Lease ``raw`` to the caller, or dead-letter it if its deliveries ran out."""
        count = self.count_of(raw)
        try:
            most = int(raw.headers.get(topo.H_MAX, 1))
        except (TypeError, ValueError):
            most = 1
        if not raw.id:
            self.state.lost.append(self.to_dead(raw, count - 1, "undecodable", "no tf-id header"))
            return
        if raw.redelivered:
            # Its previous holder's connection closed unsettled: one lost delivery, written
            # into the header of a copy at the end of the queue (RabbitMQ 3.10 keeps no
            # count, and its flag does not say how often), which a later take hands out.
            lost = count - 1
            if lost >= max(most, 1):
                self.state.lost.append(self.to_dead(raw, lost, "worker_lost", None))
            else:
                self.republish(raw, lost)
            return
        lease = Lease(raw, count, time.monotonic() + self.lease)
        self._leases[(raw.gen, raw.tag)] = lease
        out.append(lease)

    def take(self, queues: list[str], limit: int) -> list[Lease]:
        """Up to ``limit`` deliveries, queue by queue in the order given.

        A queue with a consumer hands out what its consumer pushed, highest priority
        first (FIFO among equals); a queue without one is read with ``basic.get``, and a
        queue that still had messages when ``limit`` was reached gets a consumer with a
        prefetch of ``limit * PREFETCH_FACTOR``, so the next fetches need no round trip
        per message."""
        self.require()
        self._read_pending()
        now = time.monotonic()
        for queue in queues:
            self._asked[queue] = now  # its consumer, if any, stays
        out: list[Lease] = []
        backlog: list[str] = []
        for queue in queues:
            self.declare_queue(queue)  # learns of a pause made before this process started
            if queue in self.state.paused:
                continue
            if self._take_from(queue, limit, out):
                backlog.append(queue)
            if len(out) >= limit:
                break
        for queue in backlog:
            self._consume(queue, limit)
        return out

    def _take_from(self, queue: str, limit: int, out: list[Lease]) -> bool:
        """Fill ``out`` from ``queue``; True if ``basic.get`` filled it (a backlog)."""
        held = self._held.get(queue)
        while held and len(out) < limit:
            self._hand_out(_pop_first(held), out)
        if self._prefetch.get(queue, 0) < limit and not held:
            # A consumer started for smaller fetches: one with the room asked now (what
            # the old one pushed stays held and settles on this channel).
            self._cancel(queue)
        if queue in self._consumers:
            return False
        while len(out) < limit:
            message = self.work.basic_get(self.names.work(queue), no_ack=False)
            if message is None:
                return False
            self._hand_out(self._raw(queue, message), out)
        return True

    def _read_pending(self) -> None:
        """Read the deliveries already on the socket (no waiting)."""
        sock = self._sock()
        if sock is None:
            return
        readable, _, _ = select.select([sock], [], [], 0)
        if readable or self._pending(sock):
            self._drain()

    def wait(self, waiter: Waiter) -> None:
        """Register a fetch that found nothing; it ends with the first message or its
        deadline."""
        self._waiters.append(waiter)
        self.sync_consumers()

    def _finish(self, waiter: Waiter, got: list[Lease]) -> None:
        if waiter in self._waiters:
            self._waiters.remove(waiter)
        if not waiter.finished:
            waiter.finished = True
            waiter.done(got)

    def _serve_waiters(self) -> None:
        for waiter in list(self._waiters):
            if waiter.finished:
                self._waiters.remove(waiter)
                continue
            ready = [q for q in waiter.queues if self._held.get(q) and q not in self.state.paused]
            if ready:
                got = self.take(waiter.queues, waiter.limit)
                if got:
                    self._finish(waiter, got)

    def wake_waiters(self) -> None:
        """Check every waiting fetch again now (after a resume)."""
        for waiter in list(self._waiters):
            if waiter.finished:
                continue
            got = self.take(waiter.queues, waiter.limit)
            if got:
                self._finish(waiter, got)

    def _consume(self, queue: str, prefetch: int) -> None:
        """Start a consumer on ``queue`` whose unsettled deliveries stay within
        ``prefetch`` (RabbitMQ pushes the highest priority it holds first)."""
        if queue in self._consumers or self.work is None:
            return
        self.declare_queue(queue)

        def on_message(message: Any, queue: str = queue) -> None:
            self._held.setdefault(queue, deque()).append(self._raw(queue, message))

        count = max(1, prefetch) * PREFETCH_FACTOR
        self.work.basic_qos(0, count, False)  # for consumers started after it
        self._prefetch[queue] = max(1, prefetch)
        self._consumers[queue] = self.work.basic_consume(
            self.names.work(queue), no_ack=False, callback=on_message
        )

    def held(self, queue: str) -> int:
        """Messages of ``queue`` its consumer pushed here that no fetch took yet."""
        return len(self._held.get(queue) or ())

    def release(self, queue: str) -> None:
        """Stop consuming ``queue`` and put back what its consumer pushed here and no
        fetch took (published again uncounted, at the end of its priority), so that a
        sweep of the queue sees every ready message; the next fetch consumes again."""
        if self.conn is None or self.work is None:
            return
        self._cancel(queue)
        for raw in self._held.pop(queue, None) or ():
            self.republish(raw, self.count_of(raw) - 1)

    def _cancel(self, queue: str) -> None:
        tag = self._consumers.pop(queue, None)
        self._prefetch.pop(queue, None)
        if tag is not None and self.work is not None:
            self.work.basic_cancel(tag)

    def sync_consumers(self) -> None:
        """A consumer per queue some fetch waits on or asked for lately; none on paused
        queues or queues nobody asked for in ``CONSUMER_IDLE`` seconds (what their
        consumers pushed and nobody took is published again, uncounted)."""
        if self.conn is None or self.work is None:
            return
        now = time.monotonic()
        wanted = {q for w in self._waiters for q in w.queues if q not in self.state.paused}
        for queue in list(self._consumers):
            if queue in wanted:
                continue
            if queue in self.state.paused or now - self._asked.get(queue, 0.0) > CONSUMER_IDLE:
                self.release(queue)
        for waiter in self._waiters:
            for queue in waiter.queues:
                if queue not in self.state.paused and queue not in self._consumers:
                    self._asked[queue] = now
                    self._consume(queue, waiter.limit)

    def _expire_leases(self) -> None:
        now = time.monotonic()
        for key, lease in list(self._leases.items()):
            if lease.deadline > now:
                continue
            del self._leases[key]
            lease.settled = True
            raw = lease.raw
            try:
                most = int(raw.headers.get(topo.H_MAX, 1))
            except (TypeError, ValueError):
                most = 1
            if lease.uncounted:
                self.republish(raw, lease.count - 1)
            elif lease.count >= most:
                self.state.lost.append(self.to_dead(raw, lease.count, "worker_lost", None))
            else:
                self.republish(raw, lease.count)

    def inflight(self, queue: str) -> int:
        """Deliveries of ``queue`` this process holds now."""
        return sum(1 for lease in list(self._leases.values()) if lease.raw.queue == queue)

    # -- settling (on the I/O thread) ------------------------------------------------
    def settle(self, lease: Lease, action: str, **kw: Any) -> bool:
        """Ack, requeue, retry, dead-letter or touch one delivery; False if it is no
        longer held (lease ran out, settled, or delivered on an older connection)."""
        raw = lease.raw
        if lease.settled or raw.gen != self.gen or self.conn is None:
            return False
        if action == "touch":
            lease.deadline = time.monotonic() + self.lease
            return True
        if action == "ack":
            self.work.basic_ack(raw.tag)
        elif action == "requeue":
            self.republish(raw, lease.count - 1)
        elif action == "retry":
            headers = {topo.H_MAX: kw["max_deliveries"], topo.H_COUNT: 0}
            if raw.headers.get(topo.H_TASK):
                headers[topo.H_TASK] = raw.headers[topo.H_TASK]
            self.send(raw.queue, raw.id, kw["body"], raw.priority, headers, kw["due"])
            self.work.basic_ack(raw.tag)
        elif action == "dead":
            self.to_dead(raw, lease.count, kw["reason"], kw.get("error"))
        lease.settled = True
        self._leases.pop((raw.gen, raw.tag), None)
        return True


def _run_all(settles: list[Callable[[], None]]) -> None:
    for settle in settles:
        try:
            settle()
        except Exception:  # one caller's error leaves the others' results alone
            log.exception("AMQP broker: handing a result back failed")


def _pop_first(held: deque[Raw]) -> Raw:
    """The highest-priority message of ``held``, the earliest among equals."""
    best = 0
    for i, raw in enumerate(held):
        if raw.priority > held[best].priority:
            best = i
    raw = held[best]
    del held[best]
    return raw


_KEPT = frozenset({topo.H_ID, topo.H_MAX, topo.H_COUNT, topo.H_TASK})
"""Headers a republished message keeps: routing and ``x-death`` headers are dropped."""
