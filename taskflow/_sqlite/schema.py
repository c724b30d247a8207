"""The SQLite file: opening it safely, checking it is ours, creating the schema.

One file holds a broker's messages and a result store's records (they may share it).
Every problem with the file is a :class:`~taskflow.errors.ConfigError` naming the path
and the fix, raised before anything is written: a missing directory, a read-only file or
directory, a file that is not a taskflow database, a schema newer than this version.

Schema versions: 1 indexed every message by ``(state, due)``; 2 indexes only the messages
with ``due > 0`` there (leased ones, whose ``due`` is the lease deadline, and those due
later), and stores ``due = 0`` for a message ready when it is published or handed back, so
that publishing one updates three B-trees instead of four. A version 1 file is upgraded
when it is opened (its index rebuilt, in the same transaction that checks the file); its
rows keep their ``due``, which the version 2 queries read the same way. A process of
version 1 that still has the file open keeps working: its statements find the same index
name and rows, and merely do not use the index where a ``due > 0`` term is missing.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable
from typing import Any, TypeVar

from ..errors import ConfigError

T = TypeVar("T")

__all__ = ["SCHEMA_VERSION", "open_database"]

SCHEMA_VERSION = 2
_MARK = "taskflow"

_DDL = """
CREATE TABLE IF NOT EXISTS taskflow_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS messages (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    queue TEXT NOT NULL,
    body BLOB NOT NULL,
    priority INTEGER NOT NULL,
    max_deliveries INTEGER NOT NULL,
    deliveries INTEGER NOT NULL DEFAULT 0,
    state TEXT NOT NULL,
    due REAL NOT NULL,
    token INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS messages_ready ON messages (queue, state, priority DESC, seq);
CREATE INDEX IF NOT EXISTS messages_due ON messages (state, due) WHERE due > 0;
CREATE TABLE IF NOT EXISTS dead_letters (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL,
    queue TEXT NOT NULL,
    body BLOB NOT NULL,
    reason TEXT NOT NULL,
    error TEXT,
    failed_at REAL NOT NULL,
    deliveries INTEGER NOT NULL,
    priority INTEGER NOT NULL,
    max_deliveries INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS dead_letters_queue ON dead_letters (queue, seq);
CREATE TABLE IF NOT EXISTS queues (
    name TEXT PRIMARY KEY, paused INTEGER NOT NULL DEFAULT 0, max_length INTEGER
);
CREATE TABLE IF NOT EXISTS control (seq INTEGER PRIMARY KEY, at REAL NOT NULL, body TEXT);
CREATE TABLE IF NOT EXISTS records (id TEXT PRIMARY KEY, data TEXT NOT NULL, expires REAL);
CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value TEXT NOT NULL, expires REAL);
CREATE TABLE IF NOT EXISTS worker_heartbeats (
    id TEXT PRIMARY KEY, data TEXT NOT NULL, expires REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS audit_log (
    seq INTEGER PRIMARY KEY, at REAL NOT NULL, data TEXT NOT NULL, expires REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_log_at ON audit_log (at, seq);
CREATE INDEX IF NOT EXISTS audit_log_expires ON audit_log (expires);
"""


def _check_location(path: str) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise ConfigError(
            f"SQLite database {path!r}: the directory {directory!r} does not exist; "
            "create it first (mkdir -p) or point the URL at an existing directory"
        )
    if os.path.exists(path) and not _writable(path):
        raise ConfigError(
            f"SQLite database {path!r} is not writable by this process; make it writable "
            "(chmod u+rw) or point the URL at another file"
        )
    if not os.access(directory, os.W_OK | os.X_OK):
        raise ConfigError(
            f"SQLite database {path!r}: the directory {directory!r} is not writable (SQLite "
            "keeps its journal next to the file); make it writable or use another directory"
        )


def _writable(path: str) -> bool:
    # The mode bits too: a superuser may write anything, but a file made read-only on
    # purpose is not taskflow's to change.
    mode = os.stat(path).st_mode
    return os.access(path, os.R_OK | os.W_OK) and bool(mode & 0o222)


def _not_sqlite(path: str) -> ConfigError:
    return ConfigError(
        f"{path!r} is not a taskflow database (not an SQLite file); nothing was "
        "changed: point the URL at a new file name"
    )


def _is_not_a_database(exc: sqlite3.DatabaseError) -> bool:
    # SQLITE_NOTADB (26): the header is not SQLite's. The header is checked by SQLite
    # itself, never by opening the file here: closing any other descriptor of the file
    # drops every POSIX lock this process holds on it, including those of its open
    # SQLite connections (sqlite.org/howtocorrupt.html, 2.2) -- another process may then
    # checkpoint and delete the WAL under them (a malformed database, or a hang).
    code = getattr(exc, "sqlite_errorcode", None)
    return code == 26 or (code is None and "file is not a database" in str(exc))


def _check_ours(conn: sqlite3.Connection, path: str) -> int:
    """The file's schema version (0 for an empty file); ConfigError if it is not ours or
    newer than this version."""
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    if not tables:
        return 0
    if "taskflow_meta" not in tables:
        raise ConfigError(
            f"{path!r} is an SQLite database of another program, not a taskflow database; "
            "nothing was changed: point the URL at a new file name"
        )
    meta = dict(conn.execute("SELECT key, value FROM taskflow_meta").fetchall())
    if meta.get("mark") != _MARK:
        raise ConfigError(f"{path!r} is not a taskflow database; point the URL at a new file")
    version = int(meta.get("schema_version", "0"))
    if version > SCHEMA_VERSION:
        raise ConfigError(
            f"{path!r} was written by a newer taskflow (schema version {version}; this "
            f"version reads up to {SCHEMA_VERSION}); nothing was changed: upgrade "
            "taskflow-queue in this environment"
        )
    return version


def _connect(path: str, busy_timeout: float) -> sqlite3.Connection:
    try:
        conn = sqlite3.connect(
            path, timeout=busy_timeout, isolation_level=None, check_same_thread=False
        )
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
    except sqlite3.Error as exc:
        raise ConfigError(f"SQLite database {path!r} cannot be opened: {exc}") from None
    return conn


def open_database(path: str, busy_timeout: float) -> sqlite3.Connection:
    """A connection to ``path`` in WAL mode with ``busy_timeout`` (seconds), the schema
    created or checked; ConfigError (nothing written) if the file is not usable."""
    _check_location(path)
    conn = _connect(path, busy_timeout)
    try:
        try:
            _check_ours(conn, path)
        except sqlite3.DatabaseError as exc:
            if _is_not_a_database(exc):
                raise _not_sqlite(path) from None
            raise
        _enter_wal(conn, busy_timeout)
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("BEGIN IMMEDIATE")
        # Another process may have created (or upgraded) it meanwhile.
        version = _check_ours(conn, path)
        if 0 < version < 2:
            conn.execute("DROP INDEX IF EXISTS messages_due")  # rebuilt partial below
        for statement in _DDL.split(";"):
            if statement.strip():
                conn.execute(statement)
        if version < SCHEMA_VERSION:
            conn.executemany(
                "INSERT OR REPLACE INTO taskflow_meta (key, value) VALUES (?, ?)",
                [("mark", _MARK), ("schema_version", str(SCHEMA_VERSION))],
            )
        conn.execute("COMMIT")
    except sqlite3.DatabaseError as exc:
        _abandon(conn)
        raise ConfigError(
            f"{path!r} is not a usable taskflow database ({exc}); nothing was changed: "
            "point the URL at a new file name"
        ) from None
    except BaseException:
        _abandon(conn)
        raise
    return conn


def _enter_wal(
    conn: sqlite3.Connection,
    busy_timeout: float,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Put the file in WAL mode (a no-op once it is), waiting up to ``busy_timeout``.

    Changing the journal mode takes the file's exclusive lock, and SQLite answers "database
    is locked" at once when another connection holds a lock meanwhile: it does not wait in
    the busy handler for this statement. Processes that open a new file together (the
    processes of ``taskflow worker -P N``) meet exactly that, so the change is tried again
    (:func:`patiently`, pauses of 2 ms doubling up to 50 ms).
    """
    patiently(
        conn.execute,
        "PRAGMA journal_mode = WAL",
        busy_timeout=busy_timeout,
        first=0.002,
        last=0.05,
        clock=clock,
        sleep=sleep,
    )


def busy(exc: sqlite3.OperationalError) -> bool:
    """SQLITE_BUSY: another connection holds a lock the statement needs."""
    code = getattr(exc, "sqlite_errorcode", None)
    return (code & 0xFF) == 5 if code is not None else "database is locked" in str(exc)


def patiently(
    fn: Callable[..., T],
    *args: Any,
    busy_timeout: float,
    first: float,
    last: float,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """``fn(*args)``, tried again while it fails :func:`busy`, after pauses from ``first``
    seconds doubling up to ``last``, for ``busy_timeout`` seconds from the first failure:
    the last pause is cut to end at that moment, one last try follows it, and its failure
    is raised. Any other error at once."""
    deadline: float | None = None
    pause = first
    while True:
        try:
            return fn(*args)
        except sqlite3.OperationalError as exc:
            if not busy(exc):
                raise
            now = clock()
            if deadline is None:
                deadline = now + busy_timeout
            if now >= deadline:
                raise
        sleep(min(pause, deadline - now))
        pause = min(pause * 2, last)


def _abandon(conn: sqlite3.Connection) -> None:
    if conn.in_transaction:
        conn.execute("ROLLBACK")
    conn.close()
