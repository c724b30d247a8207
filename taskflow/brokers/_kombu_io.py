"""The AMQP broker's I/O thread: one kombu connection, used by that thread only.

kombu and py-amqp are synchronous and a connection is not thread-safe, so every AMQP call
runs on one dedicated thread. The event loop hands it work with :meth:`IoThread.call`
(a function run on the thread, its result set on an asyncio future); the thread waits
in ``select`` on the AMQP socket and a wake-up pipe, so a call starts at once and
deliveries are read as they arrive. Between calls the thread services heartbeats, ends
waiting fetches whose time is up and hands back deliveries whose lease ran out.

Results go back to each event loop in one hop per batch of calls (none while an earlier
one has not run yet), and a call wakes the thread only when it is not already running
calls. A fetch is one call: it takes what is there, registers the fetch to wait if
nothing is, and collects the lost deliveries to report.

Channels: ``work`` (basic.get, consumers with a prefetch, acks: a delivery is acked on the
channel that delivered it), ``pub`` (publisher confirms on every publish) and ``admin``
(sweeps that take messages out and put them back). Each connection has a generation
number; a delivery remembers the generation that delivered it and settles only on that
connection.

Acks: the thread keeps the delivery tags of the ``work`` channel that are not acked yet
(pushed and held, leased, or being put back); a tag leaves the set only when its ack is
written. The acks of one batch go out in one write: those below the lowest unacked tag
that is not in the batch as one ``basic.ack`` with ``multiple`` set (it acks every unacked
tag up to its own, and every one of those is in the batch), each of the others alone. So
a delivery that is held, still running, redelivered and not yet put back, or whose
hand-back failed is never acked by another's ``multiple``. (A channel numbers its
deliveries in order: those the thread has not read yet have higher tags.)

Reading: on a plain TCP connection the thread reads whatever the socket holds in one
``recv`` and hands py-amqp each complete frame, instead of py-amqp's three reads (with a
socket timeout set and reset around each) per frame. A ``basic.deliver`` to one of its
consumers whose content frames have all arrived is read straight into a held delivery
(its tag, flag, priority and headers), without py-amqp's message object; anything else,
and a message that has not arrived whole, is py-amqp's to read.
"""

from __future__ import annotations

import asyncio
import bisect
import concurrent.futures
import contextlib
import logging
import math
import os
import select
import socket
import struct
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

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

_UPKEEP = 0.1
"""Seconds between checks of heartbeats and of which queues need a consumer."""

_READ_SIZE = 65536
"""Bytes read from the socket at most per ``recv``."""

_FRAME_HEADER = struct.Struct(">BHI")  # frame type, channel, payload size
_ACK_FRAME = struct.Struct(">BHIHHQBB")  # basic.ack: a method frame of 13 bytes
_BASIC_ACK = (60, 80)
_BASIC_DELIVER = b"\x00\x3c\x00\x3c"  # class 60, method 60
_TAG_BITS = struct.Struct(">QB")  # basic.deliver: delivery-tag, redelivered
_CONTENT_HEADER = struct.Struct(">4xQH")  # class, weight, body size, property flags
_U32 = struct.Struct(">I")
_I32 = struct.Struct(">i")
_I64 = struct.Struct(">q")
_FRAME_END = 0xCE

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

_GONE = (OSError, amqp.exceptions.ConnectionError)
"""What a step of closing raises when the connection no longer carries anything: a read
or write that timed out, a broken socket, a connection the server closed."""


@contextlib.contextmanager
def _unless_gone() -> Iterator[None]:
    """Skip a step of closing that fails, unless the connection is gone (re-raised)."""
    try:
        yield
    except _GONE:
        raise
    except Exception:  # a refused step is skipped, as it always was
        log.debug("AMQP: a step of closing failed", exc_info=True)


CLOSE_STEP: Final = 2.0
"""Seconds each step of closing waits for the server (cancelling the consumers, putting
back a pushed message, the close handshake). A server that does not answer within it is
left: the connection is closed without the rest, and the server puts back what it
delivered on it when it sees the connection go."""


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
    """A fetch waiting for its first message; ``done`` gets what it took and the lost
    deliveries to report."""

    queues: list[str]
    limit: int
    deadline: float
    done: Callable[[list[Lease], list[DeadLetter]], None]
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
        self._amqp: Any = None
        """py-amqp's connection under ``conn``, kept while ``conn`` is: kombu's
        ``conn.connection`` checks the connection (and would make it again itself) on every
        access, which the reads of each turn do not need."""
        self.work: Any = None
        self.pub: Any = None
        self.admin: Any = None
        self._declared: set[str] = set()
        self._bound: set[tuple[str, str, str]] = set()
        self._held: dict[str, deque[Raw]] = {}
        self._consumers: dict[str, str] = {}  # queue -> consumer tag
        self._consumed: dict[bytes, str] = {}
        """Consumer tag (as it comes on the wire) -> queue: the reverse of ``_consumers``,
        for each delivery read."""
        self._prefetch: dict[str, int] = {}  # queue -> its consumer's prefetch
        self._asked: dict[str, float] = {}  # queue -> when a fetch last asked for it
        self._leases: dict[tuple[int, int], Lease] = {}
        self._unacked: set[int] = set()
        """Delivery tags of the ``work`` channel not acked yet."""
        self._lease_due = math.inf
        """No lease runs out before this (``time.monotonic()``); may be early."""
        self._upkeep_at = 0.0
        self._waiters: list[Waiter] = []
        self._calls: deque[_Call] = deque()
        self._mailboxes: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Mailbox] = (
            weakref.WeakKeyDictionary()
        )
        self._filled: list[tuple[asyncio.AbstractEventLoop, _Mailbox]] = []
        """Mailboxes given results since the last flush."""
        self._lock = threading.Lock()
        self._wake_r, self._wake_w = -1, -1  # a pipe while the thread runs
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._abandoned = False
        """Set where closing gave up on the server: no close handshake is tried."""
        self._retry_at = 0.0
        self._backoff = 0.1
        self.blocked: str | None = None
        """Why the server stopped taking this connection's messages (its
        ``connection.blocked``: a resource alarm), until it says it takes them again."""
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
        self._abandoned = False
        self._thread = threading.Thread(target=self._run, name="taskflow-amqp-io", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Hand back what is held, close the connection and end the thread, within
        about ``2 * CLOSE_STEP`` seconds whatever the server does."""
        if self._thread is None:
            return
        fut: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._submit(lambda io: io.shutdown(), fut)
        try:
            fut.result(timeout=2 * CLOSE_STEP)
        except concurrent.futures.TimeoutError:
            # The thread is still in an earlier call (a publish waiting for its confirm)
            # or in the hand-back: end what it waits for by closing the socket under it.
            log.warning(
                "AMQP broker %s: closing took longer than %.0fs; closing the connection "
                "without handing back what it holds (the server puts it back)",
                mask_url(self.shown),
                2 * CLOSE_STEP,
            )
            self._stopping = True
            self._cut()
        except Exception:  # the thread failed the call: it still ends below
            log.debug("AMQP broker: handing back on close failed", exc_info=True)
        self._stopping = True
        self._wake()
        self._thread.join(timeout=CLOSE_STEP + 1)
        if self._thread.is_alive():
            self._cut()
            self._thread.join(timeout=1)
        self._thread = None
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._wake_r, self._wake_w = -1, -1

    def _cut(self) -> None:
        """Shut the socket down from another thread: a read or write blocked on it in the
        I/O thread returns at once with an error."""
        self._abandoned = True
        sock = self._sock()
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

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

        def settle(result: Any, error: BaseException | None) -> None:
            if fut.done():
                if orphan is not None and error is None:
                    orphan(result)
                return
            if error is not None:
                fut.set_exception(error)
            else:
                fut.set_result(result)

        self.post(loop, fn, settle)
        return await fut

    def post(
        self,
        loop: asyncio.AbstractEventLoop,
        fn: Callable[[IoThread], T],
        settle: Callable[[Any, BaseException | None], None],
    ) -> None:
        """Run ``fn(self)`` on the I/O thread, then ``settle(result, error)`` on ``loop``
        (from a callback on that loop: no task or future needed)."""

        def done(result: Any, error: BaseException | None) -> None:
            self.reply(loop, lambda: settle(result, error))

        self._calls_append(_Call(fn, done))

    def reply(self, loop: asyncio.AbstractEventLoop, settle: Callable[[], None]) -> None:
        """Run ``settle`` on ``loop``: results made on the I/O thread go back together,
        at most one wake-up of each loop per batch of calls, none while an earlier one
        has not run yet (see :class:`_Mailbox`)."""
        if threading.current_thread() is self._thread:
            box = self._mailboxes.get(loop)
            if box is None:
                box = self._mailboxes[loop] = _Mailbox()
            box.items.append(settle)
            self._filled.append((loop, box))
            return
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
            loop.call_soon_threadsafe(settle)

    def _flush_replies(self) -> None:
        filled, self._filled = self._filled, []
        for loop, box in filled:
            box.wake(loop)

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
                if self._stopping:
                    break
                self._tick()
                self._flush_replies()  # the calls' results and the waiters served
                self._wait_io()
            except _RECOVERABLE as exc:
                self._lost_connection(exc)
            except Exception:  # the thread must survive anything
                log.exception("AMQP I/O thread: unexpected error")
                self._lost_connection(None)
            finally:
                self._flush_replies()
        self._close_connection(handshake=not self._abandoned)
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
            if self._stopping:
                return

    def _wait_io(self) -> None:
        timeout = min(1.0, self.heartbeat / 4)  # heartbeat_check runs at least that often
        now = time.monotonic()
        for waiter in self._waiters:
            timeout = min(timeout, waiter.deadline - now)
        timeout = min(timeout, self._lease_due - now)
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
        transport = getattr(self._amqp, "transport", None)
        return getattr(transport, "sock", None)

    @staticmethod
    def _pending(sock: Any) -> bool:
        pending = getattr(sock, "pending", None)
        return bool(pending()) if pending is not None else False

    def _drain(self) -> None:
        """Handle every frame that has arrived, without waiting for more."""
        connection = self._amqp
        transport = connection.transport
        if _plain(transport):
            self._drain_tcp(connection, transport)
        else:
            self._drain_frames()

    def _drain_tcp(self, connection: Any, transport: Any) -> None:
        """Read what the socket holds (up to ``_READ_SIZE`` bytes a ``recv``, never
        blocking) and hand py-amqp each complete frame; a partial frame stays in the
        transport's buffer, where py-amqp's own reads (and the next drain) find it.

        Deliveries, content and heartbeats are handled from the bytes read; before any
        other frame (one whose handler may read from the socket itself, such as a channel
        closed by the server) the rest goes back to the transport's buffer first, so that
        such a read sees the frames in order."""
        recv = transport.sock.recv
        while True:
            try:
                chunk = recv(_READ_SIZE, _DONTWAIT)
            except (BlockingIOError, InterruptedError):
                chunk = None
            if chunk is not None and not chunk:
                transport.connected = False
                raise ConnectionResetError("the AMQP server closed the connection")
            data = _buffered(transport)
            self._frames(connection, transport, data + chunk if chunk else data)
            if chunk is None or len(chunk) < _READ_SIZE:
                return

    def _frames(self, connection: Any, transport: Any, data: bytes) -> None:
        """Handle each complete frame of ``data``; leave the rest in the transport."""
        on_frame = connection.on_inbound_frame
        work = self.work.channel_id if self.work is not None else -1
        pos, end = 0, len(data)
        while end - pos >= 7:
            kind, channel, size = _FRAME_HEADER.unpack_from(data, pos)
            stop = pos + 7 + size
            if stop >= end:
                break  # the frame end octet has not arrived yet
            if data[stop] != _FRAME_END:
                transport.connected = False
                raise amqp.exceptions.UnexpectedFrame(
                    f"Received frame_end {data[stop]:#04x} while expecting 0xce"
                )
            deliver = kind == 1 and data.startswith(_BASIC_DELIVER, pos + 7, stop)
            if deliver and channel == work:
                after = self._delivery(data, pos + 7, stop + 1, end, channel)
                if after < 0:
                    break  # the rest of the message has not arrived yet
                if after > 0:
                    connection.bytes_recv += 1
                    pos = after
                    continue
            payload = data[pos + 7 : stop]
            pos = stop + 1
            if kind == 1 and not deliver:
                # Its handler may read: it must find what follows in the buffer.
                _keep(transport, data[pos:])
                on_frame((kind, channel, payload))
                data = _buffered(transport)
                pos, end = 0, len(data)
                continue
            on_frame((kind, channel, payload))
        _keep(transport, data[pos:] if pos else data)

    def _delivery(self, data: bytes, method: int, pos: int, end: int, channel: int) -> int:
        """Read a ``basic.deliver`` of one of this thread's consumers straight into
        ``_held``: its method frame's payload starts at ``method``, its content frames at
        ``pos``. Returns where the next frame starts; -1 if the message has not arrived
        whole (nothing is consumed: the next drain starts again from its method frame); 0
        if it is not one to read here (py-amqp reads it, frame by frame)."""
        at = method + 5 + data[method + 4]  # after the consumer tag (a short string)
        queue = self._consumed.get(data[method + 5 : at])
        if queue is None:
            return 0  # the control consumer's, or unknown
        tag, flags = _TAG_BITS.unpack_from(data, at)
        start, stop = _frame_at(data, pos, end, 2, channel)
        if stop <= 0:
            return stop
        body_size, props = _CONTENT_HEADER.unpack_from(data, start)
        priority, headers = _properties(data, start + _CONTENT_HEADER.size, props)
        pos = stop + 1
        parts: list[bytes] = []
        got = 0
        while got < body_size:
            start, stop = _frame_at(data, pos, end, 3, channel)
            if stop <= 0:
                return stop
            parts.append(data[start:stop])
            got += stop - start
            pos = stop + 1
        body = parts[0] if len(parts) == 1 else b"".join(parts)
        self._unacked.add(tag)
        raw = Raw(tag, self.gen, queue, body, priority, headers, bool(flags & 1))
        held = self._held.get(queue)
        if held is None:
            held = self._held[queue] = deque()
        held.append(raw)
        return pos

    def _drain_frames(self) -> None:
        """py-amqp's own reads (TLS): frame by frame while the socket has data."""
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
        """Between batches of calls: serve waiting fetches, end those whose time is up,
        hand back deliveries whose lease ran out; every ``_UPKEEP`` seconds also check
        heartbeats and which queues should have a consumer."""
        now = time.monotonic()
        upkeep = now >= self._upkeep_at
        if upkeep:
            self._upkeep_at = now + _UPKEEP
        if self.conn is not None:
            if upkeep:
                self.conn.heartbeat_check()
            self._serve_waiters()
            if now >= self._lease_due:
                self._expire_leases()
        for waiter in list(self._waiters):
            if waiter.deadline <= now:
                self._finish(waiter, [])
        if upkeep:
            self.sync_consumers()

    def expire_now(self) -> None:
        """Look at every lease on the next turn (one was handed back from the loop)."""
        self._lease_due = 0.0

    # -- connection ------------------------------------------------------------------
    def _connect(self) -> None:
        conn = Connection(
            self.url,
            heartbeat=self.heartbeat,
            connect_timeout=self.connect_timeout,
            ssl=self.ssl,
            transport_options={
                "confirm_publish": False,
                "on_blocked": self._on_blocked,
                "on_unblocked": self._on_unblocked,
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
        self._amqp = conn.connection
        self.gen += 1
        self.blocked = None  # a new connection is told again if the alarm holds
        self.work = conn.channel()
        self.work.basic_qos(0, 1, False)
        self.pub = conn.channel()
        self.pub.confirm_select()
        self.admin = conn.channel()
        self._declared.clear()
        self._bound.clear()
        self._consumers.clear()
        self._consumed.clear()
        self._prefetch.clear()
        self._held.clear()
        self._unacked.clear()
        self._declare_control()
        self._backoff = 0.1
        self._upkeep_at = 0.0  # consumers for the fetches waiting across the reconnect

    def _on_blocked(self, reason: str | None = None) -> None:
        # From py-amqp, on this thread, while it reads the server's frames.
        self.blocked = str(reason or "no reason given")
        log.warning(
            "AMQP broker %s stopped taking messages: %s (a resource alarm on the server, "
            "low on memory or disk); sends fail until it clears",
            mask_url(self.shown),
            self.blocked,
        )

    def _on_unblocked(self) -> None:
        self.blocked = None
        log.warning("AMQP broker %s takes messages again", mask_url(self.shown))

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
        self._lease_due = math.inf
        self._retry_at = time.monotonic() + self._backoff
        self._backoff = min(self._backoff * 2, 5.0)

    def _close_connection(self, *, handshake: bool = False) -> None:
        """Forget the connection and close its socket. With ``handshake`` (closing on
        purpose) the server is asked first, within ``CLOSE_STEP`` seconds a read or write;
        a lost connection is closed without asking: a server that stopped answering
        would never answer that either."""
        conn, self.conn = self.conn, None
        amqp_conn, self._amqp = self._amqp, None
        self.work = self.pub = self.admin = None
        self._consumers.clear()
        self._consumed.clear()
        self._prefetch.clear()
        self._held.clear()
        self._unacked.clear()
        if conn is None:
            return
        if handshake and amqp_conn is not None and amqp_conn.transport is not None:
            try:
                amqp_conn.transport.sock.settimeout(CLOSE_STEP)
                amqp_conn.close()
            except Exception as exc:  # any failure: close without it
                log.warning(
                    "AMQP broker %s: the server did not answer the close within %.0fs "
                    "(%s); closing the connection without it",
                    mask_url(self.shown),
                    CLOSE_STEP,
                    type(exc).__name__,
                )
        if amqp_conn is not None:
            with contextlib.suppress(Exception):
                amqp_conn.collect()  # the socket, with no handshake (none if closed above)
        with contextlib.suppress(Exception):
            conn.release()

    def require(self) -> None:
        """Raise :class:`Disconnected` while there is no connection."""
        if self.conn is None:
            raise Disconnected(
                f"AMQP broker {mask_url(self.shown)} is not connected (reconnecting)"
            )

    def shutdown(self) -> None:
        """Cancel consumers and put back what was received but never handed out, each
        step within ``CLOSE_STEP`` seconds; the thread ends after this call. A server that
        does not answer a step is left: the connection is closed without the rest."""
        self._stopping = True
        for waiter in list(self._waiters):
            self._finish(waiter, [])
        if self.conn is None:
            return
        sock = self._sock()
        confirm_timeout = self.confirm_timeout
        try:
            if sock is not None:
                sock.settimeout(CLOSE_STEP)  # every blocking read and write from here on
            self.confirm_timeout = min(confirm_timeout, CLOSE_STEP)
            self._hand_back()
        except _GONE as exc:
            held = sum(len(h) for h in self._held.values())
            left = (
                f"without handing back {held} pushed message(s) (the server puts them "
                "back, each counted as a lost delivery)"
                if held
                else "without the rest of closing"
            )
            log.warning(
                "AMQP broker %s: the server did not answer within %.0fs (%s); closing the "
                "connection %s",
                mask_url(self.shown),
                CLOSE_STEP,
                type(exc).__name__,
                left,
            )
            self._abandoned = True
            self._close_connection()
        finally:
            self.confirm_timeout = confirm_timeout

    def _hand_back(self) -> None:
        """Cancel the consumers, read what they were pushed, put it back. A step that
        fails on the channel is skipped; one that finds the connection gone raises."""
        for queue, tag in list(self._consumers.items()):
            with _unless_gone():
                self.work.basic_cancel(tag)
            del self._consumers[queue]
        self._consumed.clear()
        self._prefetch.clear()
        with contextlib.suppress(Exception):
            self.conn.drain_events(timeout=0.05)  # nothing to read is a timeout here
        for held in self._held.values():
            while held:
                raw = held[0]
                with _unless_gone():
                    self.republish(raw, self.count_of(raw) - 1)
                held.popleft()
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
        """Every delay level of ``queue`` that exists (each is made on first use, by any
        process; the top levels in order, so the first missing one ends them), in the
        order a message passes them (:func:`topo.cascade`): ``t0``, ``t1``, ..., then the
        numbered ones from 30 down to 0. A sweep that takes them in this order, and the
        work queue after them, meets a message that moves on while it runs."""
        out: list[str] = []
        for i in range(topo.TOP_LEVELS):
            level = f"t{i}"
            if (queue, level, "") not in self._bound and not self.exists(
                self.names.level(queue, level)
            ):
                break
            out.append(level)
        for level in [str(k) for k in range(topo.LEVEL_BITS - 1, -1, -1)]:
            if (queue, level, "") in self._bound or self.exists(self.names.level(queue, level)):
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
        if self.blocked is not None:
            # Written now, it would wait in the server's socket buffer for the alarm to
            # clear, and its confirm with it: refused at once, it is certainly not sent.
            raise BrokerError(
                f"AMQP broker {mask_url(self.shown)} is not taking messages: "
                f"{self.blocked} (a resource alarm on the server); message {mid} was not sent"
            )
        msg = amqp.Message(
            body,
            delivery_mode=2,
            priority=priority,
            # A short string: an id past 255 bytes travels in its tf-id header only (63
            # characters are at most 252 bytes, so most ids skip the encoding).
            message_id=mid if len(mid) <= 63 or len(mid.encode()) <= 255 else None,
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
            if self.blocked is not None:
                # Held by a resource alarm, not lost: the connection is kept (dropped, it
                # would hand back every delivery it holds, to the same alarm).
                raise BrokerError(
                    f"AMQP broker {mask_url(self.shown)}: no publisher confirm within "
                    f"{self.confirm_timeout}s for message {mid}, which may or may not have "
                    f"been written: the server stopped taking messages ({self.blocked}, a "
                    "resource alarm)"
                ) from None
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
        self.ack_tags([raw.tag])

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
            self.ack_tags([raw.tag])
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
        """A delivery of the ``work`` channel (its tag is unacked until :meth:`ack_tags`)."""
        info = message.delivery_info
        tag = int(info["delivery_tag"])
        self._unacked.add(tag)
        props = message.properties
        body = message.body
        if isinstance(body, str):
            body = body.encode()
        headers = dict(props.get("application_headers") or {})
        return Raw(
            tag=tag,
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
        self._lease_due = min(self._lease_due, lease.deadline)
        self._leases[(raw.gen, raw.tag)] = lease
        out.append(lease)

    def fetch(
        self, queues: list[str], limit: int, waiter: Waiter | None
    ) -> tuple[list[Lease], list[DeadLetter]]:
        """:meth:`take`; if that finds nothing, ``waiter`` (if any) waits from now on.
        With the lost deliveries to report."""
        got = self.take(queues, limit)
        if not got and waiter is not None:
            self.wait(waiter)
        return got, self.take_lost()

    def take_lost(self) -> list[DeadLetter]:
        """The deliveries dead-lettered as lost since the previous call, to report."""
        lost, self.state.lost = self.state.lost, []
        return lost

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
        if _plain(self._amqp.transport):
            self._drain()  # a recv that finds nothing costs what a select would
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
            waiter.done(got, self.take_lost())

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
        tag = self.work.basic_consume(self.names.work(queue), no_ack=False, callback=on_message)
        self._consumers[queue] = tag
        self._consumed[tag.encode()] = queue

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
        if tag is not None:
            self._consumed.pop(tag.encode(), None)
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
        self._lease_due = math.inf
        for key, lease in list(self._leases.items()):
            if lease.deadline > now:
                self._lease_due = min(self._lease_due, lease.deadline)
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
    def ack_many(self, leases: list[Lease]) -> list[bool]:
        """Ack the deliveries of ``leases`` in one write (see the module docstring); for
        each, False if it is no longer held (lease ran out, settled, or delivered on an
        older connection)."""
        connected = self.conn is not None and self.work is not None
        results: list[bool] = []
        tags: list[int] = []
        for lease in leases:
            raw = lease.raw
            if (
                not connected
                or lease.settled
                or raw.gen != self.gen
                or raw.tag not in self._unacked
            ):
                results.append(False)
                continue
            lease.settled = True
            self._leases.pop((raw.gen, raw.tag), None)
            tags.append(raw.tag)
            results.append(True)
        # If this write fails the connection is made again: these deliveries go back to
        # the queue with it, and every caller hears False.
        self.ack_tags(tags)
        return results

    def ack_tags(self, tags: list[int]) -> None:
        """Ack these delivery tags of the ``work`` channel in one write: the run of them
        from the lowest unacked tag up as one ``multiple`` ack, the others one by one."""
        if not tags:
            return
        work = self.work
        if work is None or not work.is_open or work.connection is None:
            raise amqp.exceptions.RecoverableConnectionError("the work channel is closed")
        unacked = self._unacked
        acking = set(tags)
        # Every unacked tag below ``floor`` is being acked now.
        floor = min(unacked - acking, default=None)
        ordered = sorted(acking)
        run = len(ordered) if floor is None else _count_below(ordered, floor)
        channel = work.channel_id
        frames: list[bytes] = []
        if run > 1:
            frames.append(_ack_frame(channel, ordered[run - 1], multiple=True))
        else:
            run = 0
        frames.extend(_ack_frame(channel, tag, multiple=False) for tag in ordered[run:])
        connection = work.connection
        connection.transport.write(b"".join(frames))
        connection.bytes_sent += 1
        unacked.difference_update(acking)

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
            self.ack_tags([raw.tag])
        elif action == "requeue":
            self.republish(raw, lease.count - 1)
        elif action == "retry":
            headers = {topo.H_MAX: kw["max_deliveries"], topo.H_COUNT: 0}
            if raw.headers.get(topo.H_TASK):
                headers[topo.H_TASK] = raw.headers[topo.H_TASK]
            self.send(raw.queue, raw.id, kw["body"], raw.priority, headers, kw["due"])
            self.ack_tags([raw.tag])
        elif action == "dead":
            self.to_dead(raw, lease.count, kw["reason"], kw.get("error"))
        lease.settled = True
        self._leases.pop((raw.gen, raw.tag), None)
        return True


def _frame_at(data: bytes, pos: int, end: int, kind: int, channel: int) -> tuple[int, int]:
    """Where the payload of the frame at ``pos`` starts and ends, if it is a ``kind``
    frame of ``channel`` that has arrived whole; else ``(0, -1)`` (not arrived yet) or
    ``(0, 0)`` (another frame: left to py-amqp)."""
    if end - pos < 7:
        return 0, -1
    got, on, length = _FRAME_HEADER.unpack_from(data, pos)
    if got != kind or on != channel:
        return 0, 0
    stop = pos + 7 + length
    if stop >= end:
        return 0, -1
    if data[stop] != _FRAME_END:
        return 0, 0  # py-amqp raises on it
    return pos + 7, stop


def _properties(data: bytes, at: int, flags: int) -> tuple[int, dict[str, Any]]:
    """The priority and headers of a ``basic`` content header whose property list
    starts at ``at`` (they come after content-type and content-encoding, and the
    priority after the delivery mode)."""
    headers: dict[str, Any] = {}
    if flags & 0x8000:  # content-type
        at += 1 + data[at]
    if flags & 0x4000:  # content-encoding
        at += 1 + data[at]
    if flags & 0x2000:
        headers, at = _table(data, at)
    if flags & 0x1000:  # delivery-mode
        at += 1
    priority = data[at] if flags & 0x0800 else 0
    return priority, headers


def _table(data: bytes, at: int) -> tuple[dict[str, Any], int]:
    """The field table at ``at`` and where it ends, read as py-amqp reads it. The types
    this broker's headers use (long strings, 32- and 64-bit integers, booleans) are read
    here; a table with any other (``x-death``, written by RabbitMQ) is py-amqp's to read."""
    (length,) = _U32.unpack_from(data, at)
    start, at = at, at + 4
    limit = at + length
    table: dict[Any, Any] = {}
    while at < limit:
        size = data[at]
        key = data[at + 1 : at + 1 + size]
        at += 1 + size
        kind = data[at]
        at += 1
        value: Any
        if kind == 0x53:  # S: long string
            (size,) = _U32.unpack_from(data, at)
            text = data[at + 4 : at + 4 + size]
            at += 4 + size
            # try, not contextlib.suppress: this runs for every header of every delivery.
            try:
                value = text.decode("utf-8", "surrogatepass")
            except UnicodeDecodeError:  # not UTF-8: bytes, as py-amqp gives it
                value = text
        elif kind == 0x49:  # I: 32-bit integer
            (value,) = _I32.unpack_from(data, at)
            at += 4
        elif kind in (0x4C, 0x6C):  # L, l: 64-bit integer
            (value,) = _I64.unpack_from(data, at)
            at += 8
        elif kind == 0x74:  # t: boolean
            value = bool(data[at])
            at += 1
        else:
            (whole,), end = amqp.serialization.loads("F", data, start)
            return whole, end
        try:
            table[key.decode("utf-8", "surrogatepass")] = value
        except UnicodeDecodeError:
            table[key] = value
    return table, limit


def _plain(transport: Any) -> bool:
    """Whether :meth:`IoThread._drain_tcp` can read ``transport``: plain TCP on a socket
    without a timeout (py-amqp sets one only inside its own reads), where a ``recv`` with
    ``MSG_DONTWAIT`` returns at once."""
    return (
        type(transport) is amqp.transport.TCPTransport
        and bool(_DONTWAIT)
        and transport.sock is not None
        and transport.sock.gettimeout() is None
        # py-amqp's own buffer of a partial frame (private): a release that keeps it
        # elsewhere gets py-amqp's reads instead.
        and isinstance(getattr(transport, "_read_buffer", None), (bytes, bytearray))
    )


def _buffered(transport: Any) -> bytes:
    """The bytes py-amqp's transport has read and not parsed yet (a partial frame): its
    own reads take them first, so a drain starts from them and leaves the rest there."""
    return bytes(transport._read_buffer)  # noqa: SLF001 - py-amqp keeps no public handle


def _keep(transport: Any, rest: bytes) -> None:
    """Leave ``rest`` (not yet parsed) for the transport's next read."""
    transport._read_buffer = rest  # noqa: SLF001 - see _buffered


def _ack_frame(channel: int, tag: int, *, multiple: bool) -> bytes:
    """The ``basic.ack`` method frame of ``tag`` on ``channel``."""
    return _ACK_FRAME.pack(1, channel, 13, *_BASIC_ACK, tag, 1 if multiple else 0, _FRAME_END)


def _count_below(ordered: list[int], floor: int) -> int:
    """How many of ``ordered`` (ascending) are below ``floor``."""
    return bisect.bisect_left(ordered, floor)


class _Mailbox:
    """Results of the I/O thread for one event loop.

    The I/O thread appends and then, once per batch, wakes the loop with
    ``call_soon_threadsafe(run)`` -- unless a wake-up it asked for has not run yet: that
    :meth:`run` will find these results too, so a busy loop is not woken once per batch.
    :meth:`run` clears ``waking`` before it takes the first result, so a result appended
    after it looked is always followed by a new wake-up."""

    __slots__ = ("items", "waking")

    def __init__(self) -> None:
        self.items: deque[Callable[[], None]] = deque()
        self.waking = False

    def wake(self, loop: asyncio.AbstractEventLoop) -> None:
        """On the I/O thread, after appending."""
        if self.waking or not self.items:
            return
        self.waking = True
        try:
            loop.call_soon_threadsafe(self.run)
        except RuntimeError:  # the loop is closed: nobody waits
            self.items.clear()
            self.waking = False

    def run(self) -> None:
        """On the loop."""
        self.waking = False
        items = self.items
        while items:
            settle = items.popleft()
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


_DONTWAIT: int = getattr(socket, "MSG_DONTWAIT", 0)
"""``recv`` flag for a read that never blocks (0 where the platform has none: py-amqp's
own reads are used there)."""

_KEPT = frozenset({topo.H_ID, topo.H_MAX, topo.H_COUNT, topo.H_TASK})
"""Headers a republished message keeps: routing and ``x-death`` headers are dropped."""
