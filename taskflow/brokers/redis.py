"""The Redis broker: atomic Lua scripts, strict priorities, broker-side delays and leases.

Keys (``P`` is ``{prefix}``; the braces are a hash tag, so one app's keys share a Redis
Cluster slot):

* ``P:q:<queue>:ready``    ZSET, score ``(9 - priority) * 2**40 + seq``: priority, then FIFO
* ``P:q:<queue>:sched``    ZSET of delayed messages scored by due time (eta, retry backoff)
* ``P:q:<queue>:inflight`` ZSET of leased messages scored by lease deadline (a lease of
  10 s or more ends on a whole second, rounded up: see ``lease_deadline`` in common.lua)
* ``P:q:<queue>:dead``     LIST of dead-lettered ids, oldest first, capped
* ``P:q:<queue>:notify``   LIST of wake-up tokens an idle ``fetch`` blocks on (short TTL);
  pushed for a ready message, and for a delayed one that became the queue's earliest
* ``P:wake:<random>``      LIST one waiting ``fetch`` blocks on beside them, pushed by its
  own timer at the next due time (Redis' blocking timeouts are only 100 ms precise) or
  when the broker's clock jumps
* ``P:m:<id>``             HASH: body, queue, priority, delivery count, lease token, state
* ``P:seq``, ``P:limits``, ``P:paused``, ``P:control`` (pub/sub channel)

A message hash is owned by the sets that reference it: ack, cancel and purge delete it,
and the dead-letter list deletes the oldest ones when it is trimmed. Every state change is
one Lua script, so a crash between two commands cannot lose or duplicate a message; the
scripts check a message's fields before they move it (a malformed one is dead-lettered
``undecodable`` and reported in ``FetchResult.lost``), so no script fails half-way.
Time comes from the broker's :class:`~taskflow.clock.Clock` (passed to the scripts), so
tests can drive schedules and leases with a ``FakeClock``.

The broker is composed of parts it owns: a :class:`~taskflow._redis.connection.Connection`
(shared plumbing with the result store: URL, keys, pool, scripts, errors), the
:class:`~taskflow._redis.batcher.Batcher` its settles go through, an
:class:`~._redis_wait.IdleWait` for fetches with nothing to take, a
:class:`~._redis_control.ControlReader` and a :class:`~._redis_admin.RedisAdmin`, whose
methods it offers as its own.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, ClassVar

import orjson
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .._redis.batcher import Batcher
from .._redis.connection import Connection, RecordKeys, no_reply, send_timeout
from .._redis.scripts import BROKER_SCRIPTS
from .._redis.sync import SyncScript
from ..clock import SYSTEM_CLOCK, Clock
from ..errors import ConfigError
from ..urls import url_kwargs
from ._redis_admin import RedisAdmin
from ._redis_control import ControlReader
from ._redis_limits import RedisLimiter
from ._redis_publish import MAX_BODY, check_published, publish_args
from ._redis_wait import Drained, FetchAfter, IdleWait
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

__all__ = ["RedisBroker", "RedisDelivery"]

_DRAINED_FRESH = 10.0
"""How long a fetch that left its queues empty spares the next one its first look: well
within the life of a wake-up token (60 s, ``common.lua``), which must still be there."""

SettleItem = tuple[Any, ...]
"""One settle, as ``settle.lua`` takes it: action, id, token and three arguments; for the
items that write a record (``done``, ``done-dead``, ``done-retry``, ``record``), the record
update's arguments follow."""


def _retry_args(body: bytes, delay: float, max_deliveries: int) -> tuple[bytes, str, str]:
    """A retry item's arguments: the next attempt's body, its delay, its deliveries."""
    return body, repr(max(0.0, float(delay))), str(max(1, int(max_deliveries)))


class RedisDelivery(Delivery):
    """A leased delivery; every settle call is fenced by the lease token."""

    __slots__ = ("_lease", "_linked", "_record", "_settle", "_token")

    def __init__(
        self,
        settle: Callable[[SettleItem], Awaitable[Any]],
        lease: float,
        row: Sequence[bytes],
        record: str = "",
        linked: RecordKeys | None = None,
    ) -> None:
        """From one ``fetch`` reply row: id, queue, body, priority, delivery count, token;
        ``record``: the task record's key if the fetch marked it running; ``linked``: the
        result store the broker was linked to."""
        mid, queue, body, priority, count, token = row
        super().__init__(mid.decode(), queue.decode(), body, int(priority), int(count))
        self._settle = settle
        self._lease = lease
        self._token = token.decode()
        self._record = record
        self._linked = linked
        self.running_recorded = bool(record)
        self.records_linked = linked is not None

    @property
    def lease(self) -> float | None:
        """The broker's lease length."""
        return self._lease

    async def ack(self) -> bool:
        """Remove the message."""
        return bool(await self._settle(("ack", self.id, self._token, "", "", "")))

    async def ack_recording(
        self, task_id: str, changes: Mapping[str, Any], ttl: float | None
    ) -> tuple[bool, bool]:
        """Write the outcome to the linked store's record, then remove the message: one
        item of the settle script (see ``Delivery.ack_recording``)."""
        acked, written = await self._with_record("done", task_id, changes, ttl)
        return bool(written), bool(acked)

    async def dead_letter_recording(
        self,
        task_id: str,
        changes: Mapping[str, Any],
        ttl: float | None,
        reason: str,
        error: str | None = None,
    ) -> tuple[bool, bool]:
        """Write the failure to the linked store's record, then dead-letter the message:
        one item of the settle script (see ``Delivery.dead_letter_recording``)."""
        args = (reason, error or "", "")
        dead, written = await self._with_record("done-dead", task_id, changes, ttl, args)
        return bool(written), bool(dead)

    async def retry_recording(
        self,
        task_id: str,
        changes: Mapping[str, Any],
        body: bytes,
        delay: float,
        *,
        max_deliveries: int = 1,
    ) -> tuple[bool, bool]:
        """Write the retry to the linked store's record, then replace the message, if the
        record was written: one item of the settle script (see
        ``Delivery.retry_recording``)."""
        args = _retry_args(body, delay, max_deliveries)
        done, written = await self._with_record("done-retry", task_id, changes, None, args)
        return bool(written), bool(done)

    async def write_record(
        self, task_id: str, changes: Mapping[str, Any], ttl: float | None
    ) -> bool:
        """Write to the linked store's record: an item of the settle script, so that it
        shares a call with the settles made with it (see ``Delivery.write_record``)."""
        _, written = await self._with_record("record", task_id, changes, ttl)
        return bool(written)

    async def _with_record(
        self,
        action: str,
        task_id: str,
        changes: Mapping[str, Any],
        ttl: float | None,
        args: tuple[Any, Any, Any] = ("", "", ""),
    ) -> Any:
        linked = self._linked
        if linked is None:
            raise NotImplementedError("this broker is not linked to a Redis result store")
        head = (action, self.id, self._token, *args)
        return await self._settle((*head, *linked.update_args(task_id, changes, ttl)))

    async def nack(self, *, requeue: bool = True) -> bool:
        """Hand the message back uncounted, or drop it."""
        if not requeue:
            return bool(await self._settle(("ack", self.id, self._token, "", "", "")))
        # A record the fetch marked running goes back to queued with the message.
        item = ("requeue", self.id, self._token, self._record, "", "")
        return bool(await self._settle(item))

    async def retry(self, body: bytes, delay: float, *, max_deliveries: int = 1) -> bool:
        """Replace the message with ``body``, due in ``delay`` seconds (held in Redis)."""
        item = ("retry", self.id, self._token, *_retry_args(body, delay, max_deliveries))
        return bool(await self._settle(item))

    async def touch(self) -> bool:
        """Renew the lease."""
        return bool(await self._settle(("touch", self.id, self._token, "", "", "")))

    async def dead_letter(self, reason: str, error: str | None = None) -> bool:
        """Move the message to its queue's dead-letter list."""
        item = ("dead", self.id, self._token, reason, error or "", "")
        return bool(await self._settle(item))


class RedisBroker(Broker, DelegatedAdmin):
    """Broker on Redis (``redis://`` or ``rediss://``).

    ``prefix``: key namespace (one per app); ``lease``: seconds a delivery stays leased
    before it is redelivered; ``connect_timeout``: bound on connecting (BrokerError after).
    TLS and credentials: ``tls_ca_file``, ``tls_cert_file``, ``tls_key_file``,
    ``tls_verify`` (None: true), ``tls_min_version`` (``"1.2"``/``"1.3"``),
    ``password_file``, ``token_file`` (see ``docs/security.md``); a CA or client file turns
    TLS on for a ``redis://`` URL too. ``dead_letter_limit``: keep at most that many dead
    letters per queue this broker declares, dropping the oldest (their records stay
    ``failed``); by default every dead letter is kept until it is replayed or discarded.
    """

    # redis-py's synchronous pools notice a fork and connect again in the child.
    capabilities: ClassVar[Capabilities] = Capabilities(blocking_publish=True, fork_safe=True)

    def __init__(
        self,
        url: str = "redis://localhost:6379/0",
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
        dead_letter_limit: int | None = None,
        clock: Clock | None = None,
    ) -> None:
        self._conn = Connection(
            url,
            role="broker",
            owner="RedisBroker",
            prefix=prefix,
            connect_timeout=connect_timeout,
            security={
                "tls_ca_file": tls_ca_file,
                "tls_cert_file": tls_cert_file,
                "tls_key_file": tls_key_file,
                "tls_verify": tls_verify,
                "tls_min_version": tls_min_version,
                "password_file": password_file,
                "token_file": token_file,
            },
        )
        self._too_large = f"a Redis value may have at {self._conn.masked}"
        if not lease > 0:
            raise ConfigError(f"{self._conn.masked}: lease must be positive")
        if dead_letter_limit is not None and (
            isinstance(dead_letter_limit, bool)
            or not isinstance(dead_letter_limit, int)
            or dead_letter_limit < 1
        ):
            raise ConfigError(
                f"{self._conn.masked}: dead_letter_limit must be a positive whole number "
                f"(got {dead_letter_limit!r}); leave it out to keep every dead letter"
            )
        self.dead_letter_limit = dead_letter_limit
        self.url = self._conn.url
        self.prefix = self._conn.prefix
        self.lease = float(lease)
        self.connect_timeout = self._conn.connect_timeout
        self.clock: Clock = clock or SYSTEM_CLOCK
        self._settles: Batcher[SettleItem, Any] = Batcher(self._send_settles)
        self._settle = self._settles.submit
        self._waits = IdleWait(self._conn, self.clock)
        self._admin = RedisAdmin(self._conn, self._ask, self._run, lambda: self._linked)
        self._sync_publish = SyncScript(
            self._conn.client_url, self.connect_timeout, "publish", self._conn.client_options
        )
        self._control: ControlReader | None = None
        self._lost: list[DeadLetter] = []
        self._drained: Drained | None = None  # what the last fetch left (see fetch)
        self._limiter = RedisLimiter(self._conn, self.lease)
        self._linked: RecordKeys | None = None  # the linked result store (link_records)

    @classmethod
    def from_url(cls, url: str, *, clock: Clock | None = None) -> RedisBroker:
        """Build from a URL; query options ``prefix``, ``lease``, ``connect_timeout`` and
        the TLS and credential options."""
        return cls(url, **url_kwargs(url, "broker", cls), clock=clock)

    def __repr__(self) -> str:
        return f"<RedisBroker {self._conn.masked} prefix={self.prefix!r}>"

    def key(self, *parts: str) -> str:
        """A key in this broker's namespace (``{prefix}:a:b``)."""
        return self._conn.key(*parts)

    # -- lifecycle -------------------------------------------------------------------
    async def connect(self) -> None:
        """Open the connection pool and check the server answers within the timeout."""
        if self._conn.connected:
            return
        await self._conn.connect(BROKER_SCRIPTS)
        self._waits.open()

    async def close(self) -> None:
        """Close connections and the control subscription. Idempotent."""
        control, self._control = self._control, None
        if control is not None:
            await control.close()
        await self._conn.close()
        await self._waits.close()
        self._sync_publish.close()

    async def _run(self, script: str, args: Sequence[Any]) -> Any:
        return await self._conn.run(script, self._script_args(args))

    async def _ask(self, script: str, args: Sequence[Any]) -> Any:
        """:meth:`_run` within ``CALL_TIMEOUT`` (``Connection.ask``): off the worker's path."""
        return await self._conn.ask(script, self._script_args(args))

    def _script_args(self, args: Sequence[Any]) -> list[Any]:
        return [self._conn.tag, repr(self.clock.time()), *args]

    async def declare(self, queue: str, *, max_length: int | None = None) -> None:
        """Record ``max_length`` and this broker's ``dead_letter_limit`` for ``queue``
        (None removes a bound) and the queue's name (the operations API lists the declared
        queues).

        One round trip reads what is recorded, and only what differs is written: a queue
        declared before, with the same bounds, costs no write. A worker (or a producer's
        first send to a queue) then starts on a server that refuses writes because it
        reached its ``maxmemory``, and waits for room like the workers already running,
        instead of failing at once."""
        r = self._conn.client()
        queues, limits, deadlimits = (
            self.key("queues"),
            self.key("limits"),
            self.key("deadlimits"),
        )
        async with r.pipeline(transaction=False) as pipe:
            pipe.sismember(queues, queue)
            pipe.hget(limits, queue)
            pipe.hget(deadlimits, queue)
            known, limit_now, dead_now = await self._conn.call(pipe.execute())
        limit = None if max_length is None else str(int(max_length))
        dead = None if self.dead_letter_limit is None else str(self.dead_letter_limit)
        if not known:
            await self._conn.call(r.sadd(queues, queue))
        for key, want, have in ((limits, limit, limit_now), (deadlimits, dead, dead_now)):
            if want is None and have is not None:
                await self._conn.call(r.hdel(key, queue))
            elif want is not None and (have is None or have.decode() != want):
                await self._conn.call(r.hset(key, queue, want))

    # -- publishing ------------------------------------------------------------------
    async def publish(self, messages: Sequence[Message]) -> None:
        """Publish all of ``messages`` in one script call, or none (QueueFull)."""
        if messages:
            await self._publish(publish_args(messages), messages)

    def publish_blocking(self, messages: Sequence[Message]) -> None:
        """Thread-safe synchronous :meth:`publish` on a separate (sync) connection pool,
        so that ``delay()`` from plain threads needs no hop onto the app's event loop."""
        if messages:
            self._publish_blocking(publish_args(messages), messages)

    async def publish_recording(
        self, messages: Sequence[Message], records: Sequence[tuple[str, Mapping[str, Any]]]
    ) -> None:
        """:meth:`publish`, the linked store's queued ``records`` created by the same
        script call (see ``Broker.publish_recording``)."""
        if messages:
            await self._publish(self._with_records(messages, records), messages)

    def publish_recording_blocking(
        self, messages: Sequence[Message], records: Sequence[tuple[str, Mapping[str, Any]]]
    ) -> None:
        """:meth:`publish_blocking`, the linked store's queued ``records`` created by the
        same script call (see ``Broker.publish_recording``)."""
        if messages:
            self._publish_blocking(self._with_records(messages, records), messages)

    def _with_records(
        self, messages: Sequence[Message], records: Sequence[tuple[str, Mapping[str, Any]]]
    ) -> list[Any]:
        linked = self._linked
        if linked is None:
            raise NotImplementedError("this broker is not linked to a Redis result store")
        args = publish_args(messages)
        if records:
            args += linked.create_args(records)
        return args

    async def _publish(self, args: list[Any], messages: Sequence[Message]) -> None:
        refuse_oversized(messages, MAX_BODY, self._too_large)
        size = sum(len(m.body) for m in messages)
        script_args = self._script_args(args)
        reply = await self._conn.send("publish", script_args, "the messages", len(messages), size)
        check_published(reply)

    def _publish_blocking(self, args: list[Any], messages: Sequence[Message]) -> None:
        refuse_oversized(messages, MAX_BODY, self._too_large)
        timeout = send_timeout(len(messages), sum(len(m.body) for m in messages))
        try:
            reply = self._sync_publish(self._script_args(args), timeout)
        except RedisTimeoutError:
            raise no_reply(self._conn.masked, timeout, "the messages") from None
        except (RedisError, OSError) as exc:
            raise self._conn.error(exc) from None
        check_published(reply)

    # -- consuming -------------------------------------------------------------------
    async def fetch(self, queues: Sequence[str], max_messages: int, timeout: float) -> FetchResult:
        """Lease up to ``max_messages``; block (push-based) up to ``timeout`` for the first."""
        return await self._fetch(queues, max_messages, timeout, 0)

    async def fetch_starting(
        self, queues: Sequence[str], max_messages: int, timeout: float, start: int
    ) -> FetchResult:
        """:meth:`fetch`; if it takes at most ``start`` messages, the linked store's
        records of their tasks are marked running by the same script (one round trip
        less before each body: see ``Broker.fetch_starting``)."""
        linked = self._linked is not None
        return await self._fetch(queues, max_messages, timeout, start if linked else 0)

    def link_records(self, records: object | None) -> bool:
        """Mark the records of a Redis result store on this server running as their
        messages are leased: True if ``records`` (``RedisResultStore.record_location()``)
        are on the same server and under the same hash tag (one Redis Cluster slot)."""
        if not (
            isinstance(records, RecordKeys)
            and records.client_url == self._conn.client_url
            and records.prefix.startswith(self._conn.tag + ":")
        ):
            return False
        self._linked = records
        return True

    async def _fetch(
        self, queues: Sequence[str], max_messages: int, timeout: float, start: int
    ) -> FetchResult:
        if max_messages <= 0 or not queues:
            return FetchResult((), self._take_lost())
        notify = [self.key("q", q, "notify") for q in queues]
        linked = self._linked
        marking = [start, linked.prefix] if start > 0 and linked is not None else []
        after = None
        if self.clock is SYSTEM_CLOCK:
            # On the real clock, the fetch after a wake-up is sent with the wait itself
            # and runs on the server as the wait ends, with the server's time.
            args = [self._conn.tag, "server", repr(self.lease), max_messages, len(queues)]
            after = FetchAfter(
                self._conn.sha("fetch"), [*args, *queues, *marking], self._parse_fetch
            )
        # What the previous fetch left spares this one its first look (without ``after``
        # it is not used), if it looked in the same queues a moment ago.
        looked_in = frozenset(queues)
        drained, self._drained = self._drained, None
        if drained is not None and (
            drained.queues != looked_in or self.clock.monotonic() - drained.at > _DRAINED_FRESH
        ):
            drained = None
        got, next_due = await self._waits.fetch(
            lambda: self._fetch_once(queues, max_messages, marking), notify, timeout, after, drained
        )
        if len(got) < max_messages:
            # Fewer than asked for: every queue it looked in was left with nothing ready.
            # (``next_due`` counts the lease deadlines of what the fetch took.)
            self._drained = Drained(looked_in, next_due, self.clock.monotonic())
        return FetchResult(got, self._take_lost())

    async def _fetch_once(
        self, queues: Sequence[str], limit: int, marking: Sequence[Any]
    ) -> tuple[list[Delivery], float | None]:
        reply = await self._run("fetch", [repr(self.lease), limit, len(queues), *queues, *marking])
        return self._parse_fetch(reply)

    def _parse_fetch(self, reply: Sequence[Any]) -> tuple[list[Delivery], float | None]:
        """The deliveries of a ``fetch`` reply, and when the next held message falls due;
        the messages it dead-lettered are kept for the caller (``FetchResult.lost``)."""
        next_due = float(reply[0]) if reply[0] else None
        marks = reply[2]
        start = 3 + 6 * int(reply[1])
        now = self.clock.time()
        for i in range(3, start, 6):
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
        settle, lease, linked = self._settle, self.lease, self._linked
        if not marks:
            return [
                RedisDelivery(settle, lease, reply[i : i + 6], "", linked)
                for i in range(start, len(reply), 6)
            ], next_due
        records = linked.prefix if linked is not None else ""
        return [
            RedisDelivery(
                settle,
                lease,
                reply[i : i + 6],
                records + reply[i].decode() if mark == 114 else "",  # b"r"
                linked,
            )
            for mark, i in zip(marks, range(start, len(reply), 6), strict=True)
        ], next_due

    def _take_lost(self) -> list[DeadLetter]:
        lost, self._lost = self._lost, []
        return lost

    # -- settling --------------------------------------------------------------------
    async def _send_settles(self, items: list[SettleItem]) -> list[Any]:
        """Settles made together, in one script call (each fenced by its token): 1/0 per
        item, and for the items that write a record [1/0, 1/0 whether it was written]."""
        args: list[Any] = [repr(self.lease), len(items)]
        for item in items:
            args += item
        return list(await self._run("settle", args))

    async def cancel(self, message_id: str, queue: str) -> bool:
        """Remove a ready or scheduled message; True if it was removed."""
        return bool(await self._ask("admin", ["cancel", queue, message_id]))

    # -- control channel -------------------------------------------------------------
    async def send_control(self, command: dict[str, Any]) -> None:
        """Broadcast ``command`` to every worker of this prefix (Redis pub/sub)."""
        await self._conn.call(
            self._conn.client().publish(self.key("control"), orjson.dumps(command))
        )

    async def control_messages(self, timeout: float) -> list[dict[str, Any]]:
        """Commands received since this task's previous call, waiting up to ``timeout``."""
        if self._control is None:
            self._control = ControlReader(
                self._conn.client(), self.key("control"), self._conn.masked
            )
        return await self._control.read(timeout)

    def limiter(self) -> RedisLimiter:
        """Limits shared by every worker on this Redis and prefix (:mod:`._redis_limits`)."""
        return self._limiter

    def forget_control_reader(self) -> None:
        """Drop the current task's control cursor (a stopping worker calls this)."""
        if self._control is not None:
            self._control.forget()
