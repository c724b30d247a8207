"""The Redis broker: atomic Lua scripts, strict priorities, broker-side delays and leases.

Keys (``P`` is ``{prefix}``; the braces are a hash tag, so one app's keys share a Redis
Cluster slot):

* ``P:q:<queue>:ready``    ZSET, score ``(9 - priority) * 2**40 + seq``: priority, then FIFO
* ``P:q:<queue>:sched``    ZSET of delayed messages scored by due time (eta, retry backoff)
* ``P:q:<queue>:inflight`` ZSET of leased messages scored by lease deadline
* ``P:q:<queue>:dead``     LIST of dead-lettered ids, oldest first, capped
* ``P:q:<queue>:notify``   LIST of wake-up tokens an idle ``fetch`` blocks on (short TTL);
  pushed for a ready message, and for a delayed one that became the queue's earliest
* ``P:wake:<random>``      LIST one waiting ``fetch`` blocks on beside them, pushed by its
  own timer at the next due time (Redis' blocking timeouts are only 100 ms precise)
* ``P:m:<id>``             HASH: body, queue, priority, delivery count, lease token, state
* ``P:seq``, ``P:limits``, ``P:paused``, ``P:control`` (pub/sub channel)

A message hash is owned by the sets that reference it: ack, cancel and purge delete it,
and the dead-letter list deletes the oldest ones when it is trimmed. Every state change is
one Lua script, so a crash between two commands cannot lose or duplicate a message; the
scripts check a message's fields before they move it (a malformed one is dead-lettered
``undecodable`` and reported by ``take_lost``), so no script fails half-way.
Time comes from the broker's :class:`~taskflow.clock.Clock` (passed to the scripts), so
tests can drive schedules and leases with a ``FakeClock``.

Admin methods live in ``_redis_admin``, the control-channel reader in ``_redis_control``
and the helpers shared with the result store in ``_redis_common``.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import uuid
from collections.abc import Sequence
from typing import Any, ClassVar

import orjson
import redis.asyncio as aioredis
from redis import BlockingConnectionPool as SyncBlockingPool
from redis import Redis as SyncRedis
from redis.backoff import ExponentialBackoff
from redis.exceptions import RedisError
from redis.retry import Retry as SyncRetry

from ..clock import SYSTEM_CLOCK, Clock
from ..errors import BrokerError, ConfigError
from ..urls import BackendURL, known_options, option_float, parse_url, reject_unknown
from ._redis_admin import RedisAdmin
from ._redis_common import (
    broker_error,
    check_prefix,
    load_script,
    open_client,
    redis_client,
)
from ._redis_control import ControlReader
from ._redis_publish import check_published, check_size, publish_args
from .base import Broker, BrokerAdmin, Capabilities, DeadLetter, Delivery, Message

__all__ = [
    "RedisBroker",
    "RedisDelivery",
    "broker_error",
    "check_prefix",
    "load_script",
    "redis_client",
]

_BLOCK_CHUNK = 5.0  # longest single BLPOP; the blocking socket's timeout is above it
_RING_SLACK = 0.25  # a precise wait's server-side timeout, past its own timer


class RedisDelivery(Delivery):
    """A leased delivery; every settle call is fenced by the lease token."""

    __slots__ = ("_broker", "_token")

    def __init__(self, broker: RedisBroker, row: Sequence[bytes]) -> None:
        """From one ``fetch`` reply row: id, queue, body, priority, delivery count, token."""
        mid, queue, body, priority, count, token = row
        super().__init__(mid.decode(), queue.decode(), body, int(priority), int(count))
        self._broker = broker
        self._token = token.decode()

    @property
    def lease(self) -> float | None:
        """The broker's lease length."""
        return self._broker.lease

    async def ack(self) -> bool:
        """Remove the message."""
        return await self._broker._settle(("ack", self.id, self._token, "", "", ""))

    async def nack(self, *, requeue: bool = True) -> bool:
        """Hand the message back uncounted, or drop it."""
        action = "requeue" if requeue else "ack"
        return await self._broker._settle((action, self.id, self._token, "", "", ""))

    async def retry(self, body: bytes, delay: float, *, max_deliveries: int = 1) -> bool:
        """Replace the message with ``body``, due in ``delay`` seconds (held in Redis)."""
        item = (
            "retry",
            self.id,
            self._token,
            body,
            repr(max(0.0, float(delay))),
            str(max(1, int(max_deliveries))),
        )
        return await self._broker._settle(item)

    async def touch(self) -> bool:
        """Renew the lease."""
        return await self._broker._settle(("touch", self.id, self._token, "", "", ""))

    async def dead_letter(self, reason: str, error: str | None = None) -> bool:
        """Move the message to its queue's dead-letter list."""
        return await self._broker._settle(("dead", self.id, self._token, reason, error or "", ""))


SettleItem = tuple[str, str, str, bytes | str, str, str]


class RedisBroker(RedisAdmin, Broker, BrokerAdmin):
    """Broker on Redis (``redis://`` or ``rediss://``).

    ``prefix``: key namespace (one per app); ``lease``: seconds a delivery stays leased
    before it is redelivered; ``connect_timeout``: bound on connecting (BrokerError after).
    """

    capabilities: ClassVar[Capabilities] = Capabilities(blocking_publish=True)

    def __init__(
        self,
        url: str = "redis://localhost:6379/0",
        *,
        prefix: str = "taskflow",
        lease: float = 30.0,
        connect_timeout: float = 5.0,
        clock: Clock | None = None,
    ) -> None:
        parsed = parse_url(url, "broker")
        if parsed.scheme not in ("redis", "rediss"):
            raise ConfigError(
                f"RedisBroker needs a redis:// or rediss:// URL, got {parsed.masked!r}"
            )
        if not lease > 0 or not connect_timeout > 0:
            raise ConfigError(f"{parsed.masked}: lease and connect_timeout must be positive")
        self.url = url
        self.prefix = check_prefix(prefix, parsed.masked)
        self.lease = float(lease)
        self.connect_timeout = float(connect_timeout)
        self.clock: Clock = clock or SYSTEM_CLOCK
        self._masked = parsed.masked
        self._client_url = parsed.without_query()
        self._p = "{" + self.prefix + "}"
        self._r: aioredis.Redis | None = None
        self._blocker: aioredis.Redis | None = None
        self._scripts: dict[str, Any] = {}
        self._pending: list[tuple[SettleItem, asyncio.Future[bool]]] = []
        self._flushing = False
        self._control: ControlReader | None = None
        self._lost: list[DeadLetter] = []
        self._rings: set[asyncio.Task[None]] = set()
        self._sync_lock = threading.Lock()
        self._sync: SyncRedis | None = None
        self._sync_publish: Any = None

    @classmethod
    def from_url(cls, url: str, *, clock: Clock | None = None) -> RedisBroker:
        """Build from a URL; query options ``prefix``, ``lease``, ``connect_timeout``."""
        parsed = parse_url(url, "broker")
        reject_unknown(parsed, known_options(parsed, "broker"))
        return cls(url, **_url_kwargs(parsed), clock=clock)

    def __repr__(self) -> str:
        return f"<RedisBroker {self._masked} prefix={self.prefix!r}>"

    def key(self, *parts: str) -> str:
        """A key in this broker's namespace (``{prefix}:a:b``)."""
        return ":".join((self._p, *parts))

    # -- lifecycle -------------------------------------------------------------------
    async def connect(self) -> None:
        """Open the connection pool and check the server answers within the timeout."""
        if self._r is not None:
            return
        client = await open_client(self._client_url, self.connect_timeout, self._masked)
        self._r = client
        self._blocker = redis_client(
            self._client_url,
            self.connect_timeout,
            _BLOCK_CHUNK + self.connect_timeout,
            max_connections=4,
        )
        self._scripts = {
            name: client.register_script(load_script(name))
            for name in ("publish", "fetch", "settle", "admin")
        }

    async def close(self) -> None:
        """Close connections and the control subscription. Idempotent."""
        control, self._control = self._control, None
        if control is not None:
            await control.close()
        for client in (self._r, self._blocker):
            if client is not None:
                with contextlib.suppress(Exception):
                    await client.aclose()
        self._r = self._blocker = None
        with self._sync_lock:
            sync, self._sync, self._sync_publish = self._sync, None, None
        if sync is not None:
            with contextlib.suppress(Exception):
                sync.close()

    def _client(self) -> aioredis.Redis:
        if self._r is None:
            raise BrokerError(f"redis broker {self._masked} is not connected (call connect())")
        return self._r

    async def _run(self, script: str, args: Sequence[Any]) -> Any:
        self._client()
        try:
            return await self._scripts[script](args=[self._p, repr(self.clock.time()), *args])
        except (RedisError, OSError) as exc:
            raise broker_error(self._masked, exc) from None

    async def declare(self, queue: str, *, max_length: int | None = None) -> None:
        """Record ``max_length`` for ``queue`` (None removes the bound)."""
        r = self._client()
        try:
            if max_length is None:
                await r.hdel(self.key("limits"), queue)
            else:
                await r.hset(self.key("limits"), queue, str(int(max_length)))
        except (RedisError, OSError) as exc:
            raise broker_error(self._masked, exc) from None

    # -- publishing ------------------------------------------------------------------
    async def publish(self, messages: Sequence[Message]) -> None:
        """Publish all of ``messages`` in one script call, or none (QueueFull)."""
        if messages:
            check_size(messages, self._masked)
            check_published(await self._run("publish", publish_args(messages)))

    def publish_blocking(self, messages: Sequence[Message]) -> None:
        """Thread-safe synchronous :meth:`publish` on a separate (sync) connection pool,
        so that ``delay()`` from plain threads needs no hop onto the app's event loop."""
        if not messages:
            return
        check_size(messages, self._masked)
        script = self._sync_publish or self._open_sync()
        try:
            reply = script(args=[self._p, repr(self.clock.time()), *publish_args(messages)])
        except (RedisError, OSError) as exc:
            raise broker_error(self._masked, exc) from None
        check_published(reply)

    def _open_sync(self) -> Any:
        with self._sync_lock:
            if self._sync_publish is None:
                pool = SyncBlockingPool.from_url(
                    self._client_url,
                    max_connections=64,
                    timeout=self.connect_timeout,
                    socket_connect_timeout=self.connect_timeout,
                    retry=SyncRetry(ExponentialBackoff(cap=1.0, base=0.05), 6),
                    socket_keepalive=True,
                )
                self._sync = SyncRedis.from_pool(pool)
                self._sync_publish = self._sync.register_script(load_script("publish"))
            return self._sync_publish

    # -- consuming -------------------------------------------------------------------
    async def fetch(
        self, queues: Sequence[str], max_messages: int, timeout: float
    ) -> list[Delivery]:
        """Lease up to ``max_messages``; block (push-based) up to ``timeout`` for the first."""
        if max_messages <= 0 or not queues:
            return []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0.0, timeout)
        notify = [self.key("q", q, "notify") for q in queues]
        while True:
            got, next_due = await self._fetch_once(queues, max_messages)
            remaining = deadline - loop.time()
            if got or remaining <= 0:
                return got
            wait = min(remaining, _BLOCK_CHUNK)
            precise = False
            if next_due is not None:
                due_in = max(0.0, next_due - self.clock.time()) + 0.001
                precise = due_in < wait
                wait = min(wait, due_in)
            if self.clock.is_fake:
                wait, precise = min(wait, 0.02), False  # fake time moves without Redis knowing
            if wait >= 0.001:
                await self._block(notify, wait, precise=precise)

    async def _fetch_once(
        self, queues: Sequence[str], limit: int
    ) -> tuple[list[Delivery], float | None]:
        reply = await self._run("fetch", [repr(self.lease), limit, len(queues), *queues])
        next_due = float(reply[0]) if reply[0] else None
        start = 2 + 6 * int(reply[1])
        now = self.clock.time()
        for i in range(2, start, 6):
            mid, queue, body, reason, error, count = reply[i : i + 6]
            try:
                text_id = mid.decode()
            except UnicodeDecodeError:
                continue  # no task can have this id, so there is no record to finish
            self._lost.append(
                DeadLetter(
                    text_id, queue.decode(), body, reason.decode(), error.decode(), now, int(count)
                )
            )
        out: list[Delivery] = []
        for i in range(start, len(reply), 6):
            out.append(RedisDelivery(self, reply[i : i + 6]))
        return out, next_due

    def take_lost(self) -> list[DeadLetter]:
        """Messages this instance's fetches dead-lettered since the last call: reason
        ``worker_lost`` (deliveries ran out) or ``undecodable`` (malformed framing), so
        that the worker records their failure."""
        lost, self._lost = self._lost, []
        return lost

    async def _block(self, keys: list[str], wait: float, *, precise: bool = False) -> None:
        """Wait for a wake-up token on a dedicated connection (cancellation-safe).

        Redis checks blocking timeouts on its own timer (every 100 ms at the default
        ``hz``), too coarse for a message due in 200 ms. A ``precise`` wait therefore also
        listens on a key of its own that a local timer pushes to when ``wait`` is over.
        """
        blocker = self._blocker
        if blocker is None:
            raise BrokerError(f"redis broker {self._masked} is not connected (call connect())")
        timer: asyncio.TimerHandle | None = None
        if precise:
            own = self.key("wake", uuid.uuid4().hex)
            keys = [*keys, own]
            timer = asyncio.get_running_loop().call_later(wait, self._ring, own)
            wait += _RING_SLACK  # the server's timeout stays as a backstop
        try:
            await blocker.blpop(keys, timeout=round(wait, 3))
        except asyncio.CancelledError:
            # A cancelled BLPOP would leave a reply in flight: drop that connection.
            await blocker.connection_pool.disconnect(inuse_connections=True)
            raise
        except (RedisError, OSError) as exc:
            raise broker_error(self._masked, exc) from None
        finally:
            if timer is not None:
                timer.cancel()

    def _ring(self, key: str) -> None:
        task = asyncio.get_running_loop().create_task(self._push_wake(key))
        self._rings.add(task)
        task.add_done_callback(self._rings.discard)

    async def _push_wake(self, key: str) -> None:
        client = self._r
        if client is None:
            return
        # A token the waiter no longer needs (it woke for another reason) expires.
        with contextlib.suppress(RedisError, OSError):
            async with client.pipeline(transaction=False) as pipe:
                pipe.rpush(key, "1")
                pipe.pexpire(key, 5000)
                await pipe.execute()

    # -- settling --------------------------------------------------------------------
    async def _settle(self, item: SettleItem) -> bool:
        """Queue one settle; concurrent settles go to Redis together in one script call."""
        fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._pending.append((item, fut))
        if not self._flushing:
            self._flushing = True
            asyncio.get_running_loop().call_soon(self._start_flush)
        return await fut

    def _start_flush(self) -> None:
        task = asyncio.get_running_loop().create_task(self._flush())
        task.add_done_callback(_consume)

    async def _flush(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending[:500], self._pending[500:]
                args: list[Any] = [repr(self.lease), len(batch)]
                for item, _ in batch:
                    args += item
                try:
                    reply = await self._run("settle", args)
                except BaseException as exc:
                    for _, fut in batch:
                        if not fut.done():
                            fut.set_exception(exc)
                    continue
                for (_, fut), ok in zip(batch, reply, strict=True):
                    if not fut.done():
                        fut.set_result(bool(ok))
        finally:
            self._flushing = False

    async def cancel(self, message_id: str, queue: str) -> bool:
        """Remove a ready or scheduled message; True if it was removed."""
        return bool(await self._run("admin", ["cancel", queue, message_id]))

    # -- control channel -------------------------------------------------------------
    async def send_control(self, command: dict[str, Any]) -> None:
        """Broadcast ``command`` to every worker of this prefix (Redis pub/sub)."""
        try:
            await self._client().publish(self.key("control"), orjson.dumps(command))
        except (RedisError, OSError) as exc:
            raise broker_error(self._masked, exc) from None

    async def control_messages(self, timeout: float) -> list[dict[str, Any]]:
        """Commands received since this task's previous call, waiting up to ``timeout``."""
        if self._control is None:
            self._control = ControlReader(self._client(), self.key("control"), self._masked)
        return await self._control.read(timeout)

    def forget_control_reader(self) -> None:
        """Drop the current task's control cursor (a stopping worker calls this)."""
        if self._control is not None:
            self._control.forget()


def _consume(task: asyncio.Task[None]) -> None:
    if not task.cancelled():
        task.exception()


def _url_kwargs(parsed: BackendURL) -> dict[str, Any]:
    kwargs: dict[str, Any] = {}
    if "prefix" in parsed.options:
        kwargs["prefix"] = check_prefix(parsed.options["prefix"], parsed.masked)
    if "lease" in parsed.options:
        kwargs["lease"] = option_float(parsed, "lease", 30.0)
    if "connect_timeout" in parsed.options:
        kwargs["connect_timeout"] = option_float(parsed, "connect_timeout", 5.0)
    return kwargs
