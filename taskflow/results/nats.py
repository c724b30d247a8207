"""Result store on a JetStream key-value bucket (``nats://host:4222?prefix=shop``).

One bucket, ``TF_<prefix>_RESULTS`` (history 1), holds task records under ``r.<id>`` and
the small values of ``set_nx``/``incr`` under ``v.<key>``. Every write is a
compare-and-set on the key's revision (``create`` when absent), which is how ``update``
enforces "a terminal record never changes" and how ``incr`` stays atomic.

Retention: nats-server 2.9 only expires whole buckets (``max_age``), not single keys, while
``result_ttl`` applies to terminal records only (queued and running ones are kept). So each
stored value carries its own expiry time and is treated as absent once it passed (exact
semantics on every read and CAS), and a janitor (:mod:`._nats_janitor`) physically deletes
expired values every ``sweep_interval`` seconds (one process of the app per round). The
bucket's ``max_age`` (option ``max_age``, default none) is an extra bound on everything,
live records included. nats-server 2.11 has per-message TTLs (``Nats-TTL``), which would
make the janitor unnecessary.

``wait`` watches the record's key (a server-side push of every revision, no polling);
``publish_event`` is a core NATS publish on ``<prefix>.events``. Every ``subscribe_events``
reader also answers requests on ``<prefix>.events.listeners``, so a worker learns whether
anybody listens from one request (the server says "no responders" when nobody does) and
publishes no events otherwise.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import re
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any, ClassVar

from nats.aio.msg import Msg
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as RequestTimeout
from nats.js.errors import NotFoundError
from nats.js.kv import KeyValue

from .._nats.connection import Connection
from .._nats.names import stream_name, subject_token
from ..clock import SYSTEM_CLOCK, Clock
from ..errors import BrokerError, ConfigError, RecordTooLarge
from ..urls import url_kwargs
from . import _heartbeats_nats as heartbeats
from ._nats_acks import PubAcks, reply_body
from ._nats_janitor import Janitor, sweep
from .base import ResultStore, StoreCapabilities, is_terminal, restarted

__all__ = ["NatsResultStore"]

_KEY = re.compile(r"[-_=A-Za-z0-9]+")
_TIMEOUT = 5.0
_LISTENERS_TIMEOUT = 1.0  # a reader that is slower to answer still counts as one
_BURST = 1000  # creates in flight at once
_MINE = 10_000  # revisions of running records written here, to skip a read (_remember)
_WRONG_LAST = (10071, 10164)  # JetStream error codes: the key's last revision was another
_NO_MESSAGE = 10037  # JetStream error code of a get: no message for that subject
_HEADER_ROOM = 1024  # bytes of max_payload a value leaves for the headers of its write


def _key(kind: str, name: str) -> str:
    """A valid KV key: plain names kept, others hex-encoded under their own kind."""
    return f"{kind}.{name}" if _KEY.fullmatch(name) else f"{kind}x.{name.encode().hex()}"


def _described(key: str) -> str:
    """``the record of task <id>`` for a record's key, ``the value <name>`` for another."""
    kind, _, name = key.partition(".")
    if kind.endswith("x"):
        kind, name = kind[:-1], bytes.fromhex(name).decode(errors="replace")
    return f"the record of task {name}" if kind == "r" else f"the value {name!r}"


async def _answer(msg: Msg) -> None:
    """A reader's answer to "is anybody listening?"."""
    with contextlib.suppress(Exception):
        await msg.respond(b"")


class NatsResultStore(ResultStore):
    """Task records, counters and keys in JetStream KV; events over core NATS.

    TLS and credential options as :class:`~taskflow.brokers.nats.NatsBroker`'s.
    """

    capabilities: ClassVar[StoreCapabilities] = StoreCapabilities(events=True, atomic_create=True)

    def __init__(
        self,
        url: str = "nats://127.0.0.1:4222",
        *,
        prefix: str = "taskflow",
        connect_timeout: float = 5.0,
        max_age: float | None = None,
        sweep_interval: float | None = 60.0,
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
        self._conn = Connection(
            url,
            role="results",
            owner="NatsResultStore",
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
        self.url = self._conn.url
        self.prefix = prefix
        self.connect_timeout = self._conn.connect_timeout
        self.max_age = max_age
        if sweep_interval is not None and not sweep_interval > 0:
            raise ConfigError(f"{self._conn.masked}: sweep_interval must be positive (or None)")
        self.sweep_interval = sweep_interval
        self.clock: Clock = clock or SYSTEM_CLOCK
        self.bucket = f"TF_{stream_name(prefix)}_RESULTS"
        self._get_api = f"$JS.API.STREAM.MSG.GET.KV_{self.bucket}"
        self.events_subject = f"{subject_token(prefix)}.events"
        self.listeners_subject = f"{self.events_subject}.listeners"
        self._acks: PubAcks | None = None
        self._kv: KeyValue | None = None
        self._janitor: Janitor | None = None
        # Running records this store wrote last: key -> (revision, record); see _remember.
        self._mine: dict[str, tuple[int, dict[str, Any]]] = {}

    @classmethod
    def from_url(cls, url: str, *, clock: Clock | None = None) -> NatsResultStore:
        """Build from a URL (accepts the broker's options too: they share the URL)."""
        return cls(url, **url_kwargs(url, "results", cls), clock=clock)

    def __repr__(self) -> str:
        return f"<NatsResultStore {self._conn.masked} prefix={self.prefix!r}>"

    # -- lifecycle -------------------------------------------------------------------
    async def connect(self) -> None:
        """Connect and create the bucket if missing (BrokerError within a bound)."""
        if self._conn.connected:
            return
        nc = await self._conn.open()
        self._acks = PubAcks(nc, _TIMEOUT)
        js = nc.jetstream()
        try:
            await self._conn.call(self._acks.open())
            try:
                self._kv = await self._call(js.key_value(self.bucket))
            except (BrokerError, NotFoundError):
                self._kv = await self._call(
                    js.create_key_value(bucket=self.bucket, history=1, ttl=self.max_age)
                )
        except BaseException:
            await self.close()
            raise
        if self.sweep_interval is not None:
            self._janitor = Janitor(self, self.sweep_interval)
            self._janitor.start()

    async def close(self) -> None:
        """Stop the janitor and close the connection. Idempotent."""
        janitor, self._janitor = self._janitor, None
        if janitor is not None:
            await janitor.stop()
        acks, self._acks, self._kv = self._acks, None, None
        self._mine.clear()
        await self._conn.close()
        if acks is not None:  # what still waits for a reply will not get one
            masked = self._conn.masked
            acks.close(lambda: BrokerError(f"NATS result store {masked} was closed"))

    async def sweep(self) -> int:
        """Delete expired values and delete markers from the bucket now (the janitor's
        round); returns how many."""
        return await sweep(self._conn, self._bucket(), self.bucket, self.clock.time())

    def _pub_acks(self) -> PubAcks:
        if self._acks is None:
            raise BrokerError(f"NATS result store {self._conn.masked} is not connected")
        return self._acks

    def _bucket(self) -> KeyValue:
        if self._kv is None:
            raise BrokerError(f"NATS result store {self._conn.masked} is not connected")
        return self._kv

    async def _call(self, coro: Any) -> Any:
        # An absent key or bucket is the store's to handle.
        return await self._conn.call(coro, keep=(NotFoundError,))

    # -- stored values with their own expiry -----------------------------------------
    async def _ask(self, subject: str, data: bytes, headers: dict[str, str] | None) -> Msg:
        """One request (a publish to the bucket, or a JetStream API call) and its reply,
        within :data:`_TIMEOUT` (see :class:`PubAcks`); failures are BrokerError naming the
        URL."""
        try:
            reply = await self._pub_acks().publish(subject, data, headers)
            return await reply
        except BrokerError:
            raise
        except Exception as exc:
            raise self._conn.failure(exc) from exc

    async def _read(self, key: str) -> tuple[Any, int | None]:
        """(value, revision): value None when absent, expired or deleted (a delete marker
        has a revision); revision None if the key has no message at all."""
        request = b'{"last_by_subj":"$KV.%s.%s"}' % (self.bucket.encode(), key.encode())
        reply = await self._ask(self._get_api, request, None)
        body, error = reply_body(reply)
        if error is not None:
            if error[0] == _NO_MESSAGE:
                return None, None
            raise BrokerError(f"NATS {self._conn.masked}: KV get: {error[1]} ({error[0]})")
        message = body.get("message") or {}
        data = message.get("data")
        # No data: a delete or purge marker (or an empty value).
        return self._decode(base64.b64decode(data) if data else None), int(message["seq"])

    def _encode(self, value: Any, ttl: float | None) -> bytes:
        expires = None if ttl is None else self.clock.time() + ttl
        return json.dumps({"v": value, "x": expires}, separators=(",", ":")).encode()

    def _decode(self, data: bytes | None) -> Any:
        """The value :meth:`_encode` stored, or None for no data or an expired value."""
        if not data:
            return None
        stored = json.loads(data)
        expires = stored.get("x")
        if expires is not None and expires <= self.clock.time():
            return None
        return stored.get("v")

    async def _write(
        self, key: str, value: Any, ttl: float | None, revision: int | None
    ) -> int | None:
        """Compare-and-set against ``revision`` (None: the key must have no message); the
        new revision, or None if the key's last revision was another. RecordTooLarge,
        nothing written, for a value the server would not take (it would refuse it on
        every try)."""
        data = self._encode(value, ttl)
        limit = self._conn.client().max_payload - _HEADER_ROOM
        if len(data) > limit:
            raise RecordTooLarge(
                f"{_described(key)} is {len(data):,} bytes encoded, over the {limit:,} a value "
                f"may have in the NATS result store at {self._conn.masked} (the server's "
                f"max_payload less {_HEADER_ROOM:,} for headers)"
            )
        headers = {"Nats-Expected-Last-Subject-Sequence": str(revision or 0)}
        reply = await self._ask(f"$KV.{self.bucket}.{key}", data, headers)
        return self._written(reply, "write")

    def _written(self, reply: Msg, what: str) -> int | None:
        """The revision a compare-and-set's ``reply`` gives, None if the key's last revision
        was another; any other error a BrokerError naming ``what`` and the URL."""
        body, error = reply_body(reply)
        if error is not None:
            if error[0] in _WRONG_LAST:
                return None
            raise BrokerError(f"NATS {self._conn.masked}: KV {what}: {error[1]} ({error[0]})")
        return int(body["seq"])

    # -- records ---------------------------------------------------------------------
    async def get(self, task_id: str) -> dict[str, Any] | None:
        """The record, or None."""
        value, _ = await self._read(_key("r", task_id))
        return dict(value) if value is not None else None

    async def get_many(self, task_ids: Sequence[str]) -> list[dict[str, Any] | None]:
        """Records for ``task_ids``, read concurrently."""
        return list(await asyncio.gather(*(self.get(tid) for tid in task_ids)))

    async def update(
        self, task_id: str, changes: Mapping[str, Any], ttl: float | None
    ) -> dict[str, Any] | None:
        """Merge with compare-and-set; None (nothing written) once the record is terminal."""
        key = _key("r", task_id)
        mine = self._mine.pop(key, None)
        if mine is not None:
            # This store wrote the record last, as far as it knows: compare-and-set against
            # that revision without reading it back. A revision names one write, so if it
            # is still the key's last, the record is the one kept here; if another write
            # came between, the set fails and the loop below reads what is there.
            last, kept = mine
            record = {**kept, **changes}
            written = await self._write(key, record, ttl, last)
            if written is not None:
                self._remember(key, written, record, ttl)
                return record
        while True:
            current, revision = await self._read(key)
            if is_terminal(current):
                return None
            record = {"id": task_id} if current is None else dict(current)
            record.update(changes)
            written = await self._write(key, record, ttl, revision)
            if written is not None:
                self._remember(key, written, record, ttl)
                return record

    def _remember(self, key: str, revision: int, record: dict[str, Any], ttl: float | None) -> None:
        """Keep the revision of a ``running`` record this store just wrote, without an
        expiry (one with an expiry is read, so that an expired one counts as absent): the
        worker that runs the task writes it next (its progress, its outcome), and that
        write then needs no read. Other records are not kept: their next write is seldom
        this process's (a retry runs anywhere), and a retrying one carries its error. At
        most :data:`_MINE` are kept, the oldest forgotten first."""
        if ttl is not None or record.get("status") != "running":
            return
        mine = self._mine
        if len(mine) >= _MINE:
            del mine[next(iter(mine))]
        mine[key] = (revision, dict(record))

    async def restart(self, task_id: str, changes: Mapping[str, Any]) -> dict[str, Any] | None:
        """A new cycle of a terminal record, by compare-and-set (so exactly once)."""
        key = _key("r", task_id)
        while True:
            current, revision = await self._read(key)
            if current is None or not is_terminal(current):
                return None
            record = restarted(current, changes)
            if await self._write(key, record, None, revision) is not None:
                return record

    async def update_many(
        self, items: Sequence[tuple[str, Mapping[str, Any]]], ttl: float | None
    ) -> list[dict[str, Any] | None]:
        """:meth:`update` for many records; new records are created in one pipelined burst.

        Batches are mostly fresh records (enqueue, canvas), so every record is first tried
        as a create; only the ones that exist take the read + compare-and-set path.
        """
        records = [{"id": t, **c} for t, c in items]
        created = await self._create_burst(
            [(t, r) for (t, _), r in zip(items, records, strict=True)], ttl
        )

        async def one(i: int) -> dict[str, Any] | None:
            if created[i]:
                return records[i]
            return await self.update(items[i][0], items[i][1], ttl)

        return list(await asyncio.gather(*(one(i) for i in range(len(items)))))

    async def create_many(
        self, items: Sequence[tuple[str, Mapping[str, Any]]], ttl: float | None
    ) -> list[bool]:
        """Write each record only where none exists (KV create: atomic per record).

        The creates go out as one pipelined burst; a record whose key is taken (or holds
        an expired value or a delete marker) is settled one by one afterwards.
        """
        created = await self._create_burst([(t, {"id": t, **r}) for t, r in items], ttl)

        async def one(i: int) -> bool:
            return created[i] or await self._create(items[i][0], items[i][1], ttl)

        return list(await asyncio.gather(*(one(i) for i in range(len(items)))))

    async def _create_burst(
        self, records: Sequence[tuple[str, dict[str, Any]]], ttl: float | None
    ) -> list[bool]:
        """Try a KV create of every record without awaiting each ack; False where the key
        was not empty. Same wire effect as ``KeyValue.create``'s first attempt."""
        out: list[bool] = []
        for start in range(0, len(records), _BURST):
            out += await self._create_chunk(records[start : start + _BURST], ttl)
        return out

    async def _create_chunk(
        self, records: Sequence[tuple[str, dict[str, Any]]], ttl: float | None
    ) -> list[bool]:
        acks = self._pub_acks()
        headers = {"Nats-Expected-Last-Subject-Sequence": "0"}
        futures: list[asyncio.Future[Msg]] = []
        try:
            async with asyncio.timeout(_TIMEOUT):
                for task_id, record in records:
                    subject = f"$KV.{self.bucket}.{_key('r', task_id)}"
                    data = self._encode(record, ttl)
                    futures.append(await acks.publish(subject, data, headers))
                replies = await asyncio.gather(*futures)
        except Exception as exc:
            raise BrokerError(f"NATS {self._conn.masked}: {type(exc).__name__}: {exc}") from exc
        finally:
            for fut in futures:
                fut.cancel()  # no-op once done; drops the reply slot of an abandoned one
        return [self._written(reply, "create") is not None for reply in replies]

    async def _create(self, task_id: str, record: Mapping[str, Any], ttl: float | None) -> bool:
        key = _key("r", task_id)
        while True:
            if await self._write(key, {"id": task_id, **record}, ttl, None) is not None:
                return True
            current, revision = await self._read(key)
            if current is not None:
                return False
            # Present only as an expired value or a delete marker: replace it by revision.
            if await self._write(key, {"id": task_id, **record}, ttl, revision) is not None:
                return True

    async def delete(self, task_id: str) -> bool:
        """Forget a record; True if there was one."""
        key = _key("r", task_id)
        value, revision = await self._read(key)
        if revision is None:
            return False
        await self._call(self._bucket().purge(key))
        return value is not None

    async def wait(self, task_id: str, timeout: float | None) -> dict[str, Any] | None:
        """Watch the record's key until it is terminal (pushed by the server)."""
        record = await self.get(task_id)
        if is_terminal(record):
            return record
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        watcher = await self._call(self._bucket().watch(_key("r", task_id)))
        try:
            while True:
                remaining = None if deadline is None else deadline - loop.time()
                if remaining is not None and remaining <= 0:
                    return None
                try:
                    entry = await watcher.updates(timeout=remaining)
                except TimeoutError:
                    return None
                record = self._decode_record(entry)
                if is_terminal(record):
                    return record
        finally:
            with contextlib.suppress(Exception):
                await watcher.stop()

    def _decode_record(self, entry: Any) -> dict[str, Any] | None:
        value = None if entry is None else self._decode(entry.value)
        return dict(value) if isinstance(value, dict) else None

    # -- small values ----------------------------------------------------------------
    async def set_nx(self, key: str, value: str, ttl: float | None) -> str | None:
        """Create ``key`` unless a live value exists; return that value if so."""
        name = _key("v", key)
        while True:
            current, revision = await self._read(name)
            if current is not None:
                return str(current)
            if await self._write(name, value, ttl, revision) is not None:
                return None

    async def get_value(self, key: str) -> str | None:
        """The live value of ``key``, or None."""
        value, _ = await self._read(_key("v", key))
        return None if value is None else str(value)

    async def delete_value(self, key: str) -> None:
        """Delete ``key`` (no error if absent)."""
        with contextlib.suppress(NotFoundError):
            await self._call(self._bucket().purge(_key("v", key)))

    async def incr(self, key: str, amount: int = 1, ttl: float | None = None) -> int:
        """Add ``amount`` with a compare-and-set loop; returns the new value."""
        name = _key("v", key)
        while True:
            current, revision = await self._read(name)
            value = int(current or 0) + amount
            if await self._write(name, value, ttl, revision) is not None:
                return value

    # -- events ----------------------------------------------------------------------
    async def publish_event(self, event: Mapping[str, Any]) -> None:
        """Publish a task event to every ``subscribe_events`` reader of this prefix."""
        nc = self._conn.client()
        payload = json.dumps(dict(event), default=str).encode()
        await self._call(nc.publish(self.events_subject, payload))

    async def event_listeners(self) -> int:
        """1 while some ``subscribe_events`` reader of this prefix is connected, else 0.

        Core NATS does not count subscribers: every reader answers on
        ``listeners_subject`` and the first answer (or the server's "no responders") tells.
        """
        request = self._conn.client().request(
            self.listeners_subject, b"", timeout=_LISTENERS_TIMEOUT
        )
        try:
            await self._conn.call(request, keep=(NoRespondersError, RequestTimeout))
        except NoRespondersError:
            return 0
        except RequestTimeout:
            return 1  # subscribed but slow: with nobody there the server says so at once
        return 1

    async def subscribe_events(self) -> AsyncIterator[dict[str, Any]]:
        """Events published by any process on this prefix, until the caller stops."""
        nc = self._conn.client()
        sub = await self._call(nc.subscribe(self.events_subject))
        # Subscribed after the events: a worker that is told somebody listens finds the
        # events subscription in place (one connection keeps the order).
        presence = await self._call(nc.subscribe(self.listeners_subject, cb=_answer))
        try:
            async for msg in sub.messages:
                with contextlib.suppress(ValueError):
                    yield json.loads(msg.data)
        finally:
            for subscription in (presence, sub):
                with contextlib.suppress(Exception):
                    await subscription.unsubscribe()

    # -- worker heartbeats and the audit trail (keys in :mod:`._heartbeats_nats`) --------
    def _heartbeats(self) -> heartbeats.Bucket:
        return heartbeats.Bucket(self.bucket, self._bucket(), self._conn.client().jetstream())

    async def put_worker(self, info: dict[str, Any], *, retention: float) -> None:
        """Upsert a worker's heartbeat, live for ``retention`` seconds."""
        now = self.clock.time()
        await heartbeats.put_worker(self._call, self._heartbeats(), now, info, retention)

    async def remove_worker(self, worker_id: str) -> None:
        """Purge a worker's entry."""
        await heartbeats.remove_worker(self._call, self._heartbeats(), worker_id)

    async def workers(self) -> list[dict[str, Any]]:
        """The live worker entries, by id."""
        return await heartbeats.workers(self._call, self._heartbeats(), self.clock.time())

    async def add_audit(self, entry: dict[str, Any], *, retention: float) -> None:
        """Append an audit entry, live for ``retention`` seconds."""
        now = self.clock.time()
        await heartbeats.add_audit(self._call, self._heartbeats(), now, entry, retention)

    async def audit(self, limit: int = 100) -> list[dict[str, Any]]:
        """The newest live audit entries, newest first."""
        now = self.clock.time()
        return await heartbeats.audit(self._call, self._heartbeats(), now, limit)
