"""The SQLite result store: task records, values and counters in one file.

Usually the same file as the :class:`~taskflow.brokers.sqlite.SqliteBroker` (a results URL
derived from a ``sqlite://`` broker names its file). Every write runs inside a short
``BEGIN IMMEDIATE`` transaction (writes queued meanwhile share it), so "a terminal record
never changes again" holds across processes; expired entries read as absent at once and
are deleted by :meth:`sweep`, which writes also run about once a minute. ``wait`` wakes at
once for a record finished in this process and within about 20 ms for one finished by
another process.
"""

from __future__ import annotations

import asyncio
import functools
import json
import sqlite3
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from .._sqlite.connection import RESULTS, Database, data_version, sqlite_path
from .._sqlite.records import RecordFile
from ..clock import SYSTEM_CLOCK, Clock
from ..message import TaskStatus
from ..urls import url_kwargs
from . import _heartbeats_sqlite as heartbeats
from .base import ResultStore, StoreCapabilities, is_terminal, restarted

__all__ = ["SqliteResultStore"]

_SWEEP_EVERY = 60.0
_LIVE = "(expires IS NULL OR expires > ?)"


def _read(conn: sqlite3.Connection, task_id: str, now: float) -> dict[str, Any] | None:
    row = conn.execute(f"SELECT data FROM records WHERE id = ? AND {_LIVE}", (task_id, now))
    found = row.fetchone()
    return None if found is None else dict(json.loads(found[0]))


def _write(
    conn: sqlite3.Connection, task_id: str, record: Mapping[str, Any], expires: float | None
) -> None:
    conn.execute(
        "INSERT OR REPLACE INTO records (id, data, expires) VALUES (?, ?, ?)",
        (task_id, json.dumps(record), expires),
    )


def _update(
    conn: sqlite3.Connection,
    items: Sequence[tuple[str, Mapping[str, Any]]],
    ttl: float | None,
    now: float,
    *,
    create: bool = True,
) -> list[dict[str, Any] | None]:
    """Merge each item's changes into its record unless that is terminal (or, without
    ``create``, missing): the merged records, None for those left as they were."""
    out: list[dict[str, Any] | None] = []
    for task_id, changes in items:
        record = _read(conn, task_id, now)
        if is_terminal(record) or (record is None and not create):
            out.append(None)
            continue
        merged = {"id": task_id, **(record or {}), **changes}
        _write(conn, task_id, merged, None if ttl is None else now + ttl)
        out.append(merged)
    return out


# A purge's close: an update of records that exist only (a task without a record gets
# none; one that finished keeps its outcome).
_close = functools.partial(_update, create=False)


def _restart(
    conn: sqlite3.Connection, task_id: str, changes: Mapping[str, Any], now: float
) -> dict[str, Any] | None:
    record = _read(conn, task_id, now)
    if record is None or not is_terminal(record):
        return None
    fresh = restarted(record, changes)
    _write(conn, task_id, fresh, None)
    return fresh


def _create(
    conn: sqlite3.Connection,
    items: Sequence[tuple[str, Mapping[str, Any]]],
    ttl: float | None,
    now: float,
) -> list[bool]:
    out = []
    for task_id, record in items:
        fresh = _read(conn, task_id, now) is None
        if fresh:
            _write(conn, task_id, {"id": task_id, **record}, None if ttl is None else now + ttl)
        out.append(fresh)
    return out


def _start(conn: sqlite3.Connection, ids: Sequence[str], now: float) -> list[bool]:
    """Mark ``running`` the records of ``ids`` that exist and are not terminal (an expired
    one counts as missing); whether each was."""
    marked = []
    for task_id in ids:
        record = _read(conn, task_id, now)
        if record is None or is_terminal(record):
            marked.append(False)
            continue
        record.update(status=TaskStatus.RUNNING.value, started_at=now)
        _write_kept(conn, task_id, record)
        marked.append(True)
    return marked


def _unstart(conn: sqlite3.Connection, task_id: str, now: float) -> None:
    """A record :func:`_start` marked whose message went back unstarted: ``queued`` again."""
    record = _read(conn, task_id, now)
    if record is not None and record.get("status") == TaskStatus.RUNNING.value:
        record["status"] = TaskStatus.QUEUED.value
        _write_kept(conn, task_id, record)


def _write_kept(conn: sqlite3.Connection, task_id: str, record: Mapping[str, Any]) -> None:
    """Rewrite a record that is not terminal, keeping its expiry (none, as a rule)."""
    conn.execute("UPDATE records SET data = ? WHERE id = ?", (json.dumps(record), task_id))


def _finished(records: Sequence[Mapping[str, Any] | None]) -> bool:
    return any(is_terminal(record) for record in records)


def _value(conn: sqlite3.Connection, key: str, now: float) -> str | None:
    row = conn.execute(f"SELECT value FROM kv WHERE key = ? AND {_LIVE}", (key, now)).fetchone()
    return None if row is None else str(row[0])


def _set_nx(
    conn: sqlite3.Connection, key: str, value: str, ttl: float | None, now: float
) -> str | None:
    current = _value(conn, key, now)
    if current is not None:
        return current
    conn.execute(
        "INSERT OR REPLACE INTO kv (key, value, expires) VALUES (?, ?, ?)",
        (key, value, None if ttl is None else now + ttl),
    )
    return None


def _incr(conn: sqlite3.Connection, key: str, amount: int, ttl: float | None, now: float) -> int:
    value = int(_value(conn, key, now) or 0) + amount
    conn.execute(
        "INSERT OR REPLACE INTO kv (key, value, expires) VALUES (?, ?, ?)",
        (key, str(value), None if ttl is None else now + ttl),
    )
    return value


def _sweep(conn: sqlite3.Connection, now: float) -> int:
    records = conn.execute("DELETE FROM records WHERE expires <= ?", (now,)).rowcount
    values = conn.execute("DELETE FROM kv WHERE expires <= ?", (now,)).rowcount
    return int(records + values)


def _poll(conn: sqlite3.Connection, task_id: str, now: float) -> tuple[dict[str, Any] | None, int]:
    return _read(conn, task_id, now), data_version(conn)


class SqliteResultStore(ResultStore):
    """Records on an SQLite file (``sqlite:///path.db``).

    ``busy_timeout``: seconds a statement waits for another process's write lock.
    """

    capabilities: ClassVar[StoreCapabilities] = StoreCapabilities(
        atomic_create=True, blocking_create=True
    )

    def __init__(self, url: str, *, busy_timeout: float = 5.0, clock: Clock | None = None) -> None:
        self.url = url
        self.path = sqlite_path(url)
        self.clock: Clock = clock or SYSTEM_CLOCK
        self._db = Database(self.path, busy_timeout)
        self._next_sweep = self.clock.time() + _SWEEP_EVERY

    @classmethod
    def from_url(cls, url: str, *, clock: Clock | None = None) -> SqliteResultStore:
        """Build from ``sqlite:///path.db`` (query option ``busy_timeout``)."""
        return cls(url, **url_kwargs(url, "results", cls), clock=clock)

    async def connect(self) -> None:
        """Open the file (creating the schema); ConfigError if it is not usable."""
        await self._db.open()

    async def close(self) -> None:
        """Close the connection. Idempotent."""
        await self._db.close()

    async def get(self, task_id: str) -> dict[str, Any] | None:
        """The record, or None."""
        return await self._db.run(_read, task_id, self.clock.time())

    async def get_many(self, task_ids: Sequence[str]) -> list[dict[str, Any] | None]:
        """Records for ``task_ids`` in order, in one read."""
        return await self._db.run(_read_many, list(task_ids), self.clock.time())

    async def update(
        self, task_id: str, changes: Mapping[str, Any], ttl: float | None
    ) -> dict[str, Any] | None:
        """Merge unless terminal (atomically, in one transaction)."""
        return (await self.update_many([(task_id, changes)], ttl))[0]

    async def update_many(
        self, items: Sequence[tuple[str, Mapping[str, Any]]], ttl: float | None
    ) -> list[dict[str, Any] | None]:
        """:meth:`update` for many records in one transaction."""
        await self._sweep_if_due()
        now = self.clock.time()
        records: list[dict[str, Any] | None] = await self._db.write(_update, list(items), ttl, now)
        if _finished(records):
            self._db.wake_others(RESULTS)  # a result.get() in another process may wait
        return records

    async def restart(self, task_id: str, changes: Mapping[str, Any]) -> dict[str, Any] | None:
        """A new cycle of a terminal record (exactly once across processes)."""
        return await self._db.write(_restart, task_id, changes, self.clock.time())

    async def create_many(
        self, items: Sequence[tuple[str, Mapping[str, Any]]], ttl: float | None
    ) -> list[bool]:
        """Write records that do not exist yet, atomically."""
        return await self._db.write(_create, list(items), ttl, self.clock.time())

    def create_many_blocking(
        self, items: Sequence[tuple[str, Mapping[str, Any]]], ttl: float | None
    ) -> list[bool]:
        """:meth:`create_many` from any thread, on the calling thread (the queued records
        of a ``delay()`` made outside the app's loop)."""
        written: list[bool] = self._db.write_blocking(_create, list(items), ttl, self.clock.time())
        return written

    async def delete(self, task_id: str) -> bool:
        """Forget a record."""
        deleted: bool = await self._db.write(_delete, task_id, self.clock.time())
        return deleted

    async def wait(self, task_id: str, timeout: float | None) -> dict[str, Any] | None:
        """Wait until the record is terminal; None if ``timeout`` ran out."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            rings = self._db.rings()
            record, version = await self._db.run(_poll, task_id, self.clock.time())
            if is_terminal(record):
                return record
            remaining = 3600.0 if deadline is None else deadline - loop.time()
            if remaining <= 0:
                return None
            await self._db.wait_for_change(rings, version, remaining, listen=RESULTS)

    async def set_nx(self, key: str, value: str, ttl: float | None) -> str | None:
        """Set if absent; else return the existing value."""
        return await self._db.write(_set_nx, key, value, ttl, self.clock.time())

    async def get_value(self, key: str) -> str | None:
        """The value, or None."""
        return await self._db.run(_value, key, self.clock.time())

    async def delete_value(self, key: str) -> None:
        """Delete a key."""
        await self._db.write(_delete_value, key)

    async def incr(self, key: str, amount: int = 1, ttl: float | None = None) -> int:
        """Atomic counter (across processes)."""
        return await self._db.write(_incr, key, amount, ttl, self.clock.time())

    def record_location(self) -> RecordFile:
        """This store's file and record writes, for an SQLite broker on the same file,
        which then writes a task's record in the transaction that publishes or settles
        its message (``Broker.link_records``)."""
        return RecordFile(
            self.path, _update, _create, _close, _start, _unstart, _finished, self._sweep_if_due
        )

    async def _sweep_if_due(self) -> None:
        if self.clock.time() >= self._next_sweep:
            await self.sweep()

    async def sweep(self) -> int:
        """Delete every expired record and value now; returns how many."""
        now = self.clock.time()
        self._next_sweep = now + _SWEEP_EVERY
        return await self._db.write(_sweep, now)

    # -- worker heartbeats and the audit trail (tables in :mod:`._heartbeats_sqlite`) ----
    async def put_worker(self, info: dict[str, Any], *, retention: float) -> None:
        """Upsert a worker's heartbeat, live for ``retention`` seconds."""
        now = self.clock.time()
        await self._db.write(heartbeats.put_worker, dict(info), now + retention, now)

    async def remove_worker(self, worker_id: str) -> None:
        """Delete a worker's entry."""
        await self._db.write(heartbeats.remove_worker, worker_id)

    async def workers(self) -> list[dict[str, Any]]:
        """The live worker entries, by id."""
        return await self._db.run(heartbeats.workers, self.clock.time())

    async def add_audit(self, entry: dict[str, Any], *, retention: float) -> None:
        """Append an audit entry, live for ``retention`` seconds."""
        now = self.clock.time()
        await self._db.write(heartbeats.add_audit, dict(entry), now + retention, now)

    async def audit(self, limit: int = 100) -> list[dict[str, Any]]:
        """The newest live audit entries, newest first."""
        return await self._db.run(heartbeats.audit, limit, self.clock.time())


def _read_many(
    conn: sqlite3.Connection, task_ids: list[str], now: float
) -> list[dict[str, Any] | None]:
    return [_read(conn, task_id, now) for task_id in task_ids]


def _delete(conn: sqlite3.Connection, task_id: str, now: float) -> bool:
    live = _read(conn, task_id, now) is not None
    conn.execute("DELETE FROM records WHERE id = ?", (task_id,))
    return live


def _delete_value(conn: sqlite3.Connection, key: str) -> None:
    conn.execute("DELETE FROM kv WHERE key = ?", (key,))
