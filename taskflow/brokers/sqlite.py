"""The SQLite broker: an embedded, durable queue in one file (``sqlite:///path.db``).

Producers and workers in any number of processes on one host share the file. Every
write is a short ``BEGIN IMMEDIATE`` transaction in WAL mode, waiting up to ``busy_timeout``
for another process's lock, run on the broker's own thread (the event loop never waits on
a lock); writes that queue up meanwhile (acks of many slots, a fetch) commit together. A
``delay()`` from a plain thread writes on that thread: one ``INSERT`` for a queue without
a bound (SQLite's own transaction around one statement), else a transaction.
Deliveries are leased and fenced by a token: after a lease ran out and the message was
handed out again, the old delivery's ``ack`` does nothing and returns False. Delays,
priorities, pauses, dead letters and the control channel all live in the file, so they
survive restarts.

A waiting ``fetch`` wakes at once for a publish made in this process or, through the
wake-up sockets beside the file, in another one (:mod:`taskflow._sqlite.wake`); the
``PRAGMA data_version`` checks behind them (see :mod:`taskflow._sqlite.connection`) catch
what a lost wake-up would miss.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import sqlite3
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

from .._sqlite.connection import (
    CONTROL,
    FETCHING,
    RESULTS,
    Database,
    Doorbell,
    data_version,
    sqlite_path,
)
from .._sqlite.records import RecordFile
from ..clock import SYSTEM_CLOCK, Clock
from ..urls import url_kwargs
from . import _sqlite_ops as ops
from ._sqlite_limits import SqliteLimiter
from .base import (
    Broker,
    BrokerAdmin,
    Capabilities,
    DeadLetter,
    Delivery,
    FetchResult,
    Message,
    RecordClose,
    Waiting,
)

__all__ = ["SqliteBroker", "SqliteDelivery"]

_CONTROL_KEEP = 3600.0  # seconds a control command stays in the file
_CONTROL_CHECK = 0.02  # seconds between control reads while another process writes
# Settle actions after which the message is waiting again (the fetchers are woken).
_READY_AGAIN = frozenset({"requeue", "retry"})


class SqliteDelivery(Delivery):
    """A leased delivery from :class:`SqliteBroker`."""

    __slots__ = ("_broker", "_token")

    def __init__(
        self, broker: SqliteBroker, token: int, row: ops.Row, linked: bool, running: bool
    ) -> None:
        super().__init__(*row)
        self._broker = broker
        self._token = token
        self.records_linked = linked
        self.running_recorded = running

    @property
    def lease(self) -> float | None:
        """The broker's lease length."""
        return self._broker.lease

    async def ack(self) -> bool:
        """Remove the message."""
        return await self._broker.settle(self.id, self._token, "ack")

    async def nack(self, *, requeue: bool = True) -> bool:
        """Hand the message back uncounted (or drop it); a record the fetch marked
        ``running`` says ``queued`` again, in the same transaction."""
        if requeue and self.running_recorded:
            return await self._broker.requeue_started(self.id, self._token)
        return await self._broker.settle(self.id, self._token, "requeue" if requeue else "ack")

    async def retry(self, body: bytes, delay: float, *, max_deliveries: int = 1) -> bool:
        """Replace the message with ``body`` due in ``delay`` seconds."""
        return await self._broker.settle(
            self.id, self._token, "retry", body=body, delay=delay, max_deliveries=max_deliveries
        )

    async def touch(self) -> bool:
        """Renew the lease."""
        return await self._broker.settle(self.id, self._token, "touch")

    async def dead_letter(self, reason: str, error: str | None = None) -> bool:
        """Move to the dead-letter list."""
        return await self._broker.settle(self.id, self._token, "dead", reason=reason, error=error)

    async def ack_recording(
        self, task_id: str, changes: Mapping[str, Any], ttl: float | None
    ) -> tuple[bool, bool]:
        """Write the outcome to the linked store's record and remove the message, in one
        transaction (see ``Delivery.ack_recording``)."""
        return await self._broker.settle_recording(
            self.id, self._token, "ack", (task_id, changes, ttl)
        )

    async def dead_letter_recording(
        self,
        task_id: str,
        changes: Mapping[str, Any],
        ttl: float | None,
        reason: str,
        error: str | None = None,
    ) -> tuple[bool, bool]:
        """Write the failure to the linked store's record and dead-letter the message, in
        one transaction (see ``Delivery.dead_letter_recording``)."""
        return await self._broker.settle_recording(
            self.id, self._token, "dead", (task_id, changes, ttl), reason=reason, error=error
        )

    async def retry_recording(
        self,
        task_id: str,
        changes: Mapping[str, Any],
        body: bytes,
        delay: float,
        *,
        max_deliveries: int = 1,
    ) -> tuple[bool, bool]:
        """Write the retry to the linked store's record and replace the message if the
        record was written, in one transaction (see ``Delivery.retry_recording``)."""
        return await self._broker.settle_recording(
            self.id,
            self._token,
            "retry",
            (task_id, changes, None),
            body=body,
            delay=delay,
            max_deliveries=max_deliveries,
        )

    async def write_record(
        self, task_id: str, changes: Mapping[str, Any], ttl: float | None
    ) -> bool:
        """Write to the linked store's record (see ``Delivery.write_record``): a
        transaction of its own, committed with the writes queued meanwhile."""
        written, _ = await self._broker.settle_recording(
            self.id, self._token, None, (task_id, changes, ttl)
        )
        return written


LOW_DISK = 256 * 1024 * 1024
"""Free bytes on the database's disk below which :meth:`SqliteBroker.alarms` says so."""


class SqliteBroker(Broker, BrokerAdmin):
    """Broker on an SQLite file.

    ``url``: ``sqlite:///relative/path.db`` or ``sqlite:////absolute/path.db``.
    ``lease``: seconds a delivery stays leased before it is delivered again.
    ``busy_timeout``: seconds a statement waits for another process's write lock.
    """

    # A fetch is a write transaction, which waits its turn on the file behind the acks of
    # this process and the writes of others: a deeper buffer keeps the slots fed meanwhile
    # and lets a fetch join the acks' commit (docs/performance.md, "SQLite: the prefetch
    # buffer").
    capabilities: ClassVar[Capabilities] = Capabilities(blocking_publish=True, fetch_buffer=2.0)
    admin_backend: ClassVar[str] = "sqlite"

    def __init__(
        self,
        url: str,
        *,
        lease: float = 30.0,
        busy_timeout: float = 5.0,
        clock: Clock | None = None,
    ) -> None:
        self.url = url
        self.path = sqlite_path(url)
        self.lease = float(lease)
        self.clock: Clock = clock or SYSTEM_CLOCK
        self._db = Database(self.path, busy_timeout)
        self._records: RecordFile | None = None  # the linked result store (link_records)
        # Control readers wake for control commands only, not for every commit.
        self._control_bell = Doorbell.of(self.path, "control")
        self._limiter = SqliteLimiter(self._db, self.lease, self.clock)
        self._lost: list[DeadLetter] = []
        self._unsubscribe: Callable[[], None] | None = None
        self._control_cursors: weakref.WeakKeyDictionary[asyncio.Task[Any], int] = (
            weakref.WeakKeyDictionary()
        )

    @classmethod
    def from_url(cls, url: str, *, clock: Clock | None = None) -> SqliteBroker:
        """Build from ``sqlite:///path.db`` (query options ``lease``, ``busy_timeout``)."""
        return cls(url, **url_kwargs(url, "broker", cls), clock=clock)

    # -- lifecycle -------------------------------------------------------------------
    async def connect(self) -> None:
        """Open the file (creating the schema); ConfigError if it is not usable."""
        await self._db.open()
        if self._unsubscribe is None:
            # A test clock's jump may make a scheduled message due: waiting fetches look.
            self._unsubscribe = self.clock.subscribe(self._db.bell.ring)

    async def close(self) -> None:
        """Close the connection; the messages stay in the file."""
        unsubscribe, self._unsubscribe = self._unsubscribe, None
        if unsubscribe is not None:
            unsubscribe()
        await self._db.close()

    async def declare(self, queue: str, *, max_length: int | None = None) -> None:
        """Create ``queue``; ``max_length`` bounds its ready + scheduled messages."""
        await self._db.write(ops.declare, queue, max_length)

    # -- publishing ------------------------------------------------------------------
    async def publish(self, messages: Sequence[Message]) -> None:
        """Publish all or nothing, in one transaction."""
        if messages:
            await self._db.write(ops.insert, messages, self.clock.time())
            self._db.wake_others()

    def publish_blocking(self, messages: Sequence[Message]) -> None:
        """Thread-safe synchronous publish, on the calling thread.

        One message for a queue without a bound (a ``delay()``) is one statement, which
        SQLite commits on its own; the rest is one ``BEGIN IMMEDIATE`` transaction."""
        if not messages:
            return
        now = self.clock.time()
        if not (
            len(messages) == 1
            and self._db.statement_blocking(ops.insert_unbounded, messages[0], now)
        ):
            self._db.write_blocking(ops.insert, messages, now)
        self._db.wake_others()

    async def publish_recording(
        self, messages: Sequence[Message], records: Sequence[tuple[str, Mapping[str, Any]]]
    ) -> None:
        """:meth:`publish`, the linked store's queued ``records`` created in the same
        transaction (see ``Broker.publish_recording``)."""
        if messages:
            linked = self._linked()
            await self._db.write(ops.insert_recording, messages, self.clock.time(), linked, records)
            self._db.wake_others()

    def publish_recording_blocking(
        self, messages: Sequence[Message], records: Sequence[tuple[str, Mapping[str, Any]]]
    ) -> None:
        """:meth:`publish_blocking`, the linked store's queued ``records`` created in the
        same transaction, on the calling thread (see ``Broker.publish_recording``)."""
        if messages:
            linked = self._linked()
            now = self.clock.time()
            self._db.write_blocking(ops.insert_recording, messages, now, linked, records)
            self._db.wake_others()

    def link_records(self, records: object | None) -> bool:
        """Write the records of an SQLite result store on this broker's file in the
        transactions that publish and settle their messages: True if ``records``
        (``SqliteResultStore.record_location()``) are in the same file."""
        if not (
            isinstance(records, RecordFile)
            and os.path.abspath(records.path) == os.path.abspath(self.path)
        ):
            return False
        self._records = records
        return True

    def _linked(self) -> RecordFile:
        records = self._records
        if records is None:
            raise NotImplementedError("this broker is not linked to an SQLite result store")
        return records

    # -- consuming -------------------------------------------------------------------
    async def fetch(self, queues: Sequence[str], max_messages: int, timeout: float) -> FetchResult:
        """Take up to ``max_messages`` ready deliveries, waiting up to ``timeout``."""
        return await self._fetch(queues, max_messages, timeout, 0)

    async def fetch_starting(
        self, queues: Sequence[str], max_messages: int, timeout: float, start: int
    ) -> FetchResult:
        """:meth:`fetch`; where the broker is linked to the result store, a fetch that
        takes at most ``start`` messages marks their records ``running`` in its
        transaction (see ``Broker.fetch_starting``)."""
        return await self._fetch(queues, max_messages, timeout, start)

    async def _fetch(
        self, queues: Sequence[str], max_messages: int, timeout: float, start: int
    ) -> FetchResult:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0.0, timeout)
        write = self._db.write
        records = self._records
        linked = records is not None
        marking = (records, start) if records is not None and start > 0 else None
        while True:
            rings = self._db.rings()
            token = secrets.randbits(62) or 1
            lease = (self.clock.time(), self.lease, token)
            rows, lost, next_due, version, marks = await write(
                ops.take_starting, list(queues), max_messages, lease, marking
            )
            self._lost.extend(lost)
            remaining = deadline - loop.time()
            if rows or remaining <= 0:
                marks = marks or [False] * len(rows)
                got = [
                    SqliteDelivery(self, token, row, linked, marked)
                    for row, marked in zip(rows, marks, strict=True)
                ]
                found, self._lost = self._lost, []
                return FetchResult(got, found)
            if next_due is not None:
                # None from a clock that moves only when told: its moves ring the bell.
                due_in = self.clock.real_timeout(next_due - self.clock.time())
                if due_in is not None:
                    remaining = min(remaining, max(0.0, due_in) + 0.0005)
            await self._db.wait_for_change(rings, version, remaining, listen=FETCHING)
            # Woken: the take that follows is on the pickup's path. On this thread when the
            # connection is idle, it saves two thread hops.
            write = self._db.write_soon

    async def requeue_started(self, mid: str, token: int) -> bool:
        """Hand back the delivery of ``mid`` leased under ``token``, whose record the fetch
        marked ``running``, and mark the record ``queued`` again, in one transaction."""
        held: bool = await self._db.write(
            ops.requeue_started, (mid, token), self.clock.time(), self._linked()
        )
        if held:
            self._db.wake_others()
        return held

    async def settle(self, mid: str, token: int, action: str, **extra: Any) -> bool:
        """Settle the delivery of ``mid`` leased under ``token`` (see :class:`SqliteDelivery`)."""
        extra["lease"] = self.lease
        settled: bool = await self._db.write(
            ops.settle, (mid, token), action, self.clock.time(), extra
        )
        if settled and action in _READY_AGAIN:
            self._db.wake_others()
        return settled

    async def settle_recording(
        self,
        mid: str,
        token: int,
        action: str | None,
        record: tuple[str, Mapping[str, Any], float | None],
        **extra: Any,
    ) -> tuple[bool, bool]:
        """Write the task record ``record`` (its id, the changes, their time to live) to the
        linked store and settle the delivery of ``mid`` with ``action`` (None: the record
        only), in one transaction; whether the record was written (False: it was
        terminal) and whether the settle held (see ``ops.settle_recording``)."""
        linked = self._linked()
        await linked.sweep_if_due()
        extra["lease"] = self.lease
        merged, settled = await self._db.write(
            ops.settle_recording,
            (mid, token),
            self.clock.time(),
            (action, extra),
            (linked, *record),
        )
        if linked.finished(merged):
            self._db.wake_others(RESULTS)  # a result.get() in another process may wait
        if settled and action in _READY_AGAIN:
            self._db.wake_others()
        return merged[0] is not None, settled

    async def cancel(self, message_id: str, queue: str) -> bool:
        """Remove a ready or scheduled message."""
        removed: bool = await self._db.write(ops.cancel, message_id, queue)
        return removed

    # -- admin -----------------------------------------------------------------------
    async def depth(self, queue: str) -> dict[str, int]:
        """Counts by state."""
        counts, lost = await self._db.write(ops.depth, queue, self.clock.time())
        self._lost.extend(lost)
        return counts

    async def peek(self, queue: str, limit: int = 10) -> list[bytes]:
        """Next ready bodies in delivery order."""
        return await self._db.run(ops.peek, queue, limit, self.clock.time())

    async def purge_ids(self, queue: str, *, scheduled: bool = True) -> list[str]:
        """Drop ready (and scheduled) messages; their ids."""
        return await self._db.write(ops.purge_ids, queue, scheduled, self.clock.time())

    async def purge_batch_closing(
        self, queue: str, *, scheduled: bool, limit: int, closing: RecordClose
    ) -> list[str]:
        """:meth:`purge_batch`; where the broker is linked to the result store
        (:meth:`link_records`), up to ``limit`` messages are dropped and their records
        closed in one transaction (see ``BrokerAdmin.purge_batch_closing``). Otherwise
        (a store elsewhere) up to ``limit`` are listed, their records closed, and then
        those still waiting dropped: a ``close`` that fails drops nothing, and a message
        leased in between stays, its worker finding its record closed."""
        linked = self._records
        if linked is None:
            now = self.clock.time()
            listed = await self._db.run(ops.purgeable, queue, (scheduled, limit), now)
            if not listed:
                return []
            await closing.close([mid for _, mid in listed])
            dropped: list[str] = await self._db.write(
                ops.purge_listed, queue, listed, scheduled, self.clock.time()
            )
            return dropped
        close = (linked, closing.changes, closing.ttl)
        ids: list[str] = await self._db.write(
            ops.purge_closing, queue, (scheduled, limit), self.clock.time(), close
        )
        if ids:
            self._db.wake_others(RESULTS)  # a result.get() in another process may wait
        return ids

    async def pause(self, queue: str) -> None:
        """Stop delivering from ``queue`` (in every process)."""
        await self._db.write(ops.set_paused, queue, True)

    async def resume(self, queue: str) -> None:
        """Deliver again."""
        await self._db.write(ops.set_paused, queue, False)
        self._db.wake_others()

    async def dead_letters(self, queue: str, limit: int = 100) -> list[DeadLetter]:
        """Oldest first."""
        return await self._db.run(ops.dead_letters, queue, limit)

    async def replay(self, queue: str, ids: Sequence[str] | None = None) -> int:
        """Publish dead letters again with a fresh delivery budget."""
        replayed: int = await self._db.write(ops.replay, queue, ids, self.clock.time())
        if replayed:
            self._db.wake_others()
        return replayed

    async def requeue(self, queue: str, messages: Sequence[Message]) -> list[str]:
        """Move dead letters back as ``messages`` (matched by id), each at most once."""
        requeued: list[str] = await self._db.write(ops.requeue, queue, messages, self.clock.time())
        if requeued:
            self._db.wake_others()
        return requeued

    async def alarms(self) -> list[str]:
        """The disk that holds the database with less than :data:`LOW_DISK` bytes free:
        full, every write fails (sends, settles, records)."""
        try:
            free = shutil.disk_usage(os.path.dirname(os.path.abspath(self.path))).free
        except OSError:
            return []
        if free >= LOW_DISK:
            return []
        return [
            f"sqlite at {self.path}: {free:,} bytes free on its disk; full, every write "
            f"fails (sends, settles, records)"
        ]

    async def known_queues(self) -> list[str]:
        """Declared queues and queues holding messages or dead letters."""
        return await self._db.run(ops.known_queues)

    async def paused_queues(self) -> set[str]:
        """Queues paused now."""
        return await self._db.run(ops.paused_queues)

    async def browse(self, queue: str, state: str, offset: int, limit: int) -> list[Waiting]:
        """A window of ready, scheduled or running messages (LIMIT/OFFSET)."""
        return await self._db.run(ops.browse, queue, state, (offset, limit), self.clock.time())

    async def dead_page(
        self, queue: str, position: int, limit: int
    ) -> tuple[list[tuple[int, DeadLetter]], int | None]:
        """Dead letters from sequence ``position`` on (keyset paging)."""
        return await self._db.run(ops.dead_page, queue, position, limit)

    async def dead_by_ids(self, queue: str, ids: Sequence[str]) -> list[DeadLetter]:
        """The dead letters with ``ids``."""
        return await self._db.run(ops.dead_by_ids, queue, ids)

    async def discard_dead(self, queue: str, ids: Sequence[str]) -> list[str]:
        """Delete these dead letters."""
        return await self._db.write(ops.discard_dead, queue, ids)

    async def add_dead(self, letters: Sequence[DeadLetter]) -> None:
        """File ``letters`` as dead letters."""
        await self._db.write(ops.add_dead, letters)

    async def present(self, queue: str, ids: Sequence[str]) -> set[str]:
        """Which of ``ids`` have a message or a dead letter in ``queue``."""
        return await self._db.run(ops.present, queue, ids)

    # -- control channel -------------------------------------------------------------
    async def send_control(self, command: dict[str, Any]) -> None:
        """Broadcast to every reader of :meth:`control_messages`, in any process."""
        await self._db.write(_add_control, json.dumps(command), self.clock.time())
        self._control_bell.ring()
        self._db.wake_others(CONTROL)

    async def control_messages(self, timeout: float) -> list[dict[str, Any]]:
        """Commands sent since this task's previous call (its first call subscribes)."""
        key = asyncio.current_task()
        if key is None:
            raise RuntimeError("control messages are read from inside an asyncio task")
        cursor: int | None = self._control_cursors.get(key)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0.0, timeout)
        bell = self._control_bell
        while True:
            rings = bell.rings
            last, commands, version = await self._db.run(_read_control, cursor)
            self._control_cursors[key] = cursor = last
            remaining = deadline - loop.time()
            if commands or remaining <= 0:
                return commands
            # Another process's command wakes us (.wake); any commit of another process
            # is noticed by the data_version checks behind that.
            await self._db.wait_for_change(
                rings, version, remaining, bell=bell, first_check=_CONTROL_CHECK, listen=FETCHING
            )

    def limiter(self) -> SqliteLimiter:
        """Limits shared by every process on this file (:mod:`._sqlite_limits`)."""
        return self._limiter

    def forget_control_reader(self) -> None:
        """Drop the current task's control cursor (called when a worker stops)."""
        task = asyncio.current_task()
        if task is not None:
            self._control_cursors.pop(task, None)


def _add_control(conn: sqlite3.Connection, body: str, now: float) -> None:
    conn.execute("DELETE FROM control WHERE at < ?", (now - _CONTROL_KEEP,))
    conn.execute("INSERT INTO control (at, body) VALUES (?, ?)", (now, body))


def _read_control(
    conn: sqlite3.Connection, cursor: int | None
) -> tuple[int, list[dict[str, Any]], int]:
    version = data_version(conn)
    if cursor is None:
        (last,) = conn.execute("SELECT coalesce(max(seq), 0) FROM control").fetchone()
        return int(last), [], version
    rows = conn.execute("SELECT seq, body FROM control WHERE seq > ? ORDER BY seq", (cursor,))
    commands = [(int(seq), json.loads(body)) for seq, body in rows]
    last = commands[-1][0] if commands else cursor
    return last, [command for _, command in commands], version
