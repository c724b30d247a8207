"""The Redis result store: task records as hashes, a Lua-enforced terminal rule, and
push-based waiting over pub/sub.

Keys (``P`` is ``{prefix}``, the same hash tag the broker uses):

* ``P:r:<task id>``  HASH, one field per record field, each value JSON text. ``_x`` holds
  the logical expiry (epoch seconds) next to the Redis TTL, so a test clock and Redis agree.
* ``P:v:<key>``      HASH ``{v, x}`` for ``set_nx``/``get_value``/``incr`` values.
* ``P:done:<id>``    pub/sub channel the terminal update publishes on; ``P:events`` too.

The update script refuses to touch a terminal record, so two workers racing to finish the
same task cannot overwrite each other. Waiters share one pub/sub connection per store: a
thousand concurrent ``get()`` calls cost a thousand subscriptions, not a thousand sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any, ClassVar

import orjson
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .._redis.batcher import BATCH, Batcher
from .._redis.connection import Connection, RecordKeys, no_reply, send_timeout
from .._redis.scripts import RESULT_SCRIPTS
from .._redis.sync import SyncScript
from ..clock import SYSTEM_CLOCK, Clock
from ..urls import url_kwargs
from . import _heartbeats_redis as heartbeats
from ._redis_listener import DoneListener
from .base import ResultStore, StoreCapabilities, is_terminal

__all__ = ["RedisResultStore"]

_RECHECK = 10.0  # a waiter re-reads its record this often, in case a notice was lost


class RedisResultStore(ResultStore):
    """Result store on Redis. ``prefix`` must match the broker's to share a namespace.

    TLS and credential options as :class:`~taskflow.brokers.redis.RedisBroker`'s.
    """

    capabilities: ClassVar[StoreCapabilities] = StoreCapabilities(
        events=True, atomic_create=True, blocking_create=True, fork_safe=True
    )

    def __init__(
        self,
        url: str = "redis://localhost:6379/0",
        *,
        prefix: str = "taskflow",
        connect_timeout: float = 5.0,
        tls_ca_file: str | None = None,
        tls_cert_file: str | None = None,
        tls_key_file: str | None = None,
        tls_verify: bool | None = None,
        tls_min_version: str | None = None,
        password_file: str | None = None,
        token_file: str | None = None,
        clock: Clock | None = None,
    ) -> None:
        self._conn = Connection(
            url,
            role="results",
            owner="RedisResultStore",
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
        self.url = self._conn.url
        self.prefix = self._conn.prefix
        self.connect_timeout = self._conn.connect_timeout
        self.clock: Clock = clock or SYSTEM_CLOCK
        self._listener: DoneListener | None = None
        self._updates: Batcher[list[Any], dict[str, Any] | None] = Batcher(self._send_updates)
        self._sync_create = SyncScript(
            self._conn.client_url, self.connect_timeout, "result_create", self._conn.client_options
        )

    @classmethod
    def from_url(cls, url: str, *, clock: Clock | None = None) -> RedisResultStore:
        """Build from a URL (accepts the broker's options too: they share the URL)."""
        return cls(url, **url_kwargs(url, "results", cls), clock=clock)

    def __repr__(self) -> str:
        return f"<RedisResultStore {self._conn.masked} prefix={self.prefix!r}>"

    def key(self, *parts: str) -> str:
        """A key in this store's namespace."""
        return self._conn.key(*parts)

    # -- lifecycle -------------------------------------------------------------------
    async def connect(self) -> None:
        """Open the pool and check the server answers within the connect timeout."""
        await self._conn.connect(RESULT_SCRIPTS)

    async def close(self) -> None:
        """Close the pool and the waiters' subscription. Idempotent."""
        listener, self._listener = self._listener, None
        if listener is not None:
            await listener.close()
        await self._conn.close()
        self._sync_create.close()

    # -- records ---------------------------------------------------------------------
    def _decode(self, raw: Any) -> dict[str, Any] | None:
        if not raw:
            return None
        if isinstance(raw, list):
            raw = dict(zip(raw[::2], raw[1::2], strict=True))
        expires = raw.pop(b"_x", None)
        if expires is not None and float(expires) <= self.clock.time():
            return None
        return {k.decode(): orjson.loads(v) for k, v in raw.items()}

    async def get(self, task_id: str) -> dict[str, Any] | None:
        """The record, or None."""
        return self._decode(
            await self._conn.call(self._conn.client().hgetall(self.key("r", task_id)))
        )

    async def get_many(self, task_ids: Sequence[str]) -> list[dict[str, Any] | None]:
        """Records for ``task_ids`` in one round trip."""
        r = self._conn.client()
        async with r.pipeline(transaction=False) as pipe:
            for tid in task_ids:
                pipe.hgetall(self.key("r", tid))
            rows = await self._conn.call(pipe.execute())
        return [self._decode(row) for row in rows]

    def _update_args(
        self, task_id: str, changes: Mapping[str, Any], ttl: float | None
    ) -> list[Any]:
        args: list[Any] = [
            self.key("r", task_id),
            repr(self.clock.time()),
            "" if ttl is None else repr(float(ttl)),
            self.key("done", task_id),
            orjson.dumps(task_id),
            len(changes),
        ]
        for field, value in changes.items():
            args += [field, orjson.dumps(value)]
        return args

    async def update(
        self, task_id: str, changes: Mapping[str, Any], ttl: float | None
    ) -> dict[str, Any] | None:
        """Merge ``changes`` atomically; None (nothing written) if the record is terminal.

        Updates made concurrently (a worker's slots finishing together) are coalesced
        into one script call, which applies each of them whole, one after the other.
        """
        self._conn.client()
        return await self._updates.submit(self._update_args(task_id, changes, ttl))

    async def _send_updates(self, calls: list[list[Any]]) -> list[dict[str, Any] | None]:
        """Updates made together: one script call (each update applied whole)."""
        args: list[Any] = [len(calls)]
        for call in calls:
            args += call
        # Not bounded here: the worker's record writes go with its fetches and settles,
        # which it bounds itself (leases); a bound costs each call about 12 µs of CPU
        # (asyncio's timeout). update_many, the operator's and the canvas's batches, is.
        rows = await self._conn.run("result_update", args)
        return [self._decode(row) for row in rows]

    async def restart(self, task_id: str, changes: Mapping[str, Any]) -> dict[str, Any] | None:
        """A new cycle of a terminal record, in one script (so exactly once)."""
        args: list[Any] = [self.key("r", task_id), repr(self.clock.time()), len(changes)]
        for field, value in changes.items():
            args += [field, orjson.dumps(value)]
        return self._decode(await self._conn.run("result_restart", args))  # see restart_many

    async def restart_many(
        self, items: Sequence[tuple[str, Mapping[str, Any]]]
    ) -> list[dict[str, Any] | None]:
        """Many restarts in one pipelined round trip (each one still atomic)."""
        self._conn.client()
        if not items:
            return []
        calls = []
        for task_id, changes in items:
            args: list[Any] = [self.key("r", task_id), repr(self.clock.time()), len(changes)]
            for field, value in changes.items():
                args += [field, orjson.dumps(value)]
            calls.append(args)
        # Not bounded: a replay whose restart timed out could not tell which records went
        # back to queued, and one left queued beside its dead letter is skipped by every
        # later replay. The answer is waited for (operations.md, "A server stopped
        # answering").
        rows = await self._conn.run_many("result_restart", calls)
        return [self._decode(row) for row in rows]

    async def create_many(
        self, items: Sequence[tuple[str, Mapping[str, Any]]], ttl: float | None
    ) -> list[bool]:
        """Write records that do not exist yet: one script call for the whole batch."""
        self._conn.client()
        if not items:
            return []
        args = self._create_args(items, ttl)
        written = await self._conn.send("result_create", args, "the records", len(items))
        if ttl is not None:
            await self._conn.call(self._expire_many([t for t, _ in items], ttl))
        return [bool(w) for w in written]

    def create_many_blocking(
        self, items: Sequence[tuple[str, Mapping[str, Any]]], ttl: float | None
    ) -> list[bool]:
        """:meth:`create_many` from any thread, on a synchronous pool of its own (the
        queued records of a ``delay()`` made outside the app's loop)."""
        return self.begin_create_many_blocking(items, ttl)()

    def record_location(self) -> RecordKeys:
        """This store's server, record keys and update encoding, for a Redis broker on the
        same server and hash tag (``Broker.link_records``)."""
        return RecordKeys(
            self._conn.client_url,
            self.key("r", ""),
            self._update_args,
            lambda items: self._create_args(items, None),
        )

    def begin_create_many_blocking(
        self, items: Sequence[tuple[str, Mapping[str, Any]]], ttl: float | None
    ) -> Callable[[], list[bool]]:
        """Send the creates now; the call returned reads their answer."""
        if ttl is not None:  # records with a lifetime are not sent this way
            raise NotImplementedError("create_many_blocking writes records without a ttl")
        self._conn.client()
        if not items:
            return list
        timeout = send_timeout(len(items))
        try:
            pending = self._sync_create.send(self._create_args(items, None), timeout)
        except (RedisError, OSError) as exc:
            raise self._conn.error(exc) from None

        def finish() -> list[bool]:
            try:
                written = pending()
            except RedisTimeoutError:
                raise no_reply(self._conn.masked, timeout, "the records") from None
            except (RedisError, OSError) as exc:
                raise self._conn.error(exc) from None
            return [bool(w) for w in written]

        return finish

    def _create_args(
        self, items: Sequence[tuple[str, Mapping[str, Any]]], ttl: float | None
    ) -> list[Any]:
        args: list[Any] = [len(items)]
        for task_id, record in items:
            fields = {"id": task_id, **record}
            if ttl is not None:
                fields["_x"] = self.clock.time() + ttl
            args += [self.key("r", task_id), len(fields)]
            for field, value in fields.items():
                args += [field, orjson.dumps(value)]
        return args

    async def _expire_many(self, task_ids: list[str], ttl: float) -> Any:
        async with self._conn.client().pipeline(transaction=False) as pipe:
            for task_id in task_ids:
                pipe.pexpire(self.key("r", task_id), max(1, int(ttl * 1000)))
            return await pipe.execute()

    async def update_many(
        self, items: Sequence[tuple[str, Mapping[str, Any]]], ttl: float | None
    ) -> list[dict[str, Any] | None]:
        """Many updates, :data:`~taskflow._redis.batcher.BATCH` to a script call (each
        applied whole): a call's run time stays bounded, as Redis serves nobody else
        meanwhile (an admin purge or a large canvas writes thousands at once)."""
        self._conn.client()
        calls = [self._update_args(t, c, ttl) for t, c in items]
        rows: list[dict[str, Any] | None] = []
        for start in range(0, len(calls), BATCH):
            rows += await self._conn.call(self._send_updates(calls[start : start + BATCH]))
        return rows

    async def delete(self, task_id: str) -> bool:
        """Forget a record."""
        record = await self.get(task_id)
        deleted = await self._conn.call(self._conn.client().delete(self.key("r", task_id)))
        return bool(deleted) and record is not None

    async def wait(self, task_id: str, timeout: float | None) -> dict[str, Any] | None:
        """Wait for a terminal record, woken by the terminal update's pub/sub notice."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        if self._listener is None:
            self._listener = DoneListener(self._conn.client(), self._conn.masked)
        # Its own reference: a close() meanwhile drops the store's.
        listener = self._listener
        channel = self.key("done", task_id).encode()
        while True:
            fut = await listener.watch(channel)
            try:
                record = await self.get(task_id)
                if is_terminal(record):
                    return record
                remaining = None if deadline is None else deadline - loop.time()
                if remaining is not None and remaining <= 0:
                    return None
                wait = _RECHECK if remaining is None else min(remaining, _RECHECK)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await asyncio.shield(fut)
            finally:
                await listener.unwatch(channel, fut)

    # -- small values ----------------------------------------------------------------
    async def _value(self, key: str, action: str, arg: str, ttl: float | None) -> Any:
        args = [
            self.key("v", key),
            repr(self.clock.time()),
            action,
            arg,
            "" if ttl is None else repr(float(ttl)),
        ]
        return await self._conn.run("result_value", args)  # on the worker's path: see above

    async def set_nx(self, key: str, value: str, ttl: float | None) -> str | None:
        """Set ``key`` if absent (returns None), else return the existing value."""
        current = await self._value(key, "set_nx", value, ttl)
        return None if current is None else bytes(current).decode()

    async def get_value(self, key: str) -> str | None:
        """The value of ``key``, or None."""
        current = await self._value(key, "get", "", None)
        return None if current is None else bytes(current).decode()

    async def delete_value(self, key: str) -> None:
        """Delete ``key``."""
        await self._conn.call(self._conn.client().delete(self.key("v", key)))

    async def incr(self, key: str, amount: int = 1, ttl: float | None = None) -> int:
        """Atomically add ``amount``; ``ttl`` (None: no expiry) restarts on every call."""
        return int(await self._value(key, "incr", str(int(amount)), ttl))

    # -- events ----------------------------------------------------------------------
    async def publish_event(self, event: Mapping[str, Any]) -> None:
        """Publish a task event to every ``subscribe_events`` reader of this prefix."""
        payload = orjson.dumps(dict(event), default=str)
        await self._conn.call(self._conn.client().publish(self.key("events"), payload))

    async def event_listeners(self) -> int:
        """Subscribers of this prefix's event channel (PUBSUB NUMSUB)."""
        counts = await self._conn.call(self._conn.client().pubsub_numsub(self.key("events")))
        return int(counts[0][1]) if counts else 0

    async def subscribe_events(self) -> AsyncIterator[dict[str, Any]]:
        """Events published by any process on this prefix, until the caller stops."""
        pubsub: Any = self._conn.client().pubsub(ignore_subscribe_messages=True)
        try:
            await self._conn.call(pubsub.subscribe(self.key("events")))
            async for msg in pubsub.listen():
                if msg.get("type") == "message":
                    yield orjson.loads(msg["data"])
        finally:
            with contextlib.suppress(Exception):
                await pubsub.aclose()

    # -- worker heartbeats and the audit trail (keys in :mod:`._heartbeats_redis`) -------
    async def put_worker(self, info: dict[str, Any], *, retention: float) -> None:
        """Upsert a worker's heartbeat, with a TTL of ``retention`` seconds."""
        await heartbeats.put_worker(self._conn, self.key, self.clock.time(), info, retention)

    async def remove_worker(self, worker_id: str) -> None:
        """Delete a worker's entry."""
        await heartbeats.remove_worker(self._conn, self.key, worker_id)

    async def workers(self) -> list[dict[str, Any]]:
        """The live worker entries, by id."""
        return await heartbeats.workers(self._conn, self.key, self.clock.time())

    async def add_audit(self, entry: dict[str, Any], *, retention: float) -> None:
        """Append an audit entry (the sorted set is trimmed by age on each write)."""
        await heartbeats.add_audit(self._conn, self.key, self.clock.time(), entry, retention)

    async def audit(self, limit: int = 100) -> list[dict[str, Any]]:
        """The newest live audit entries, newest first."""
        return await heartbeats.audit(self._conn, self.key, self.clock.time(), limit)
