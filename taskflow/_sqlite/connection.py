"""One SQLite connection per file and process, used from its own thread.

A broker and a result store of one process on the same file share it: each holds a
:class:`Database` handle on the :class:`Connection`. Statements of the event loop's callers
run on the connection's single worker thread, so the event loop never blocks on a busy
lock (a writer in another process): :meth:`Database.run` hands a function over and awaits
it. :meth:`Database.write` runs a function inside ``BEGIN IMMEDIATE ... COMMIT``: short
write transactions that either commit whole or roll back. Writes that queue up while the
thread is busy are committed together (group commit); a function that raises has its own
changes undone and the others commit (the batch is run again, each write in a savepoint);
every caller is answered only after the commit. The blocking variants
(:meth:`Database.call`, :meth:`Database.write_blocking`, and
:meth:`Database.statement_blocking` for a write of one statement, which SQLite commits on
its own) run on the calling thread, taking the connection's lock in turn with its thread.

Wake-ups: a commit that changed rows, made through any :class:`Database` of this process
on a file, wakes the waiters of every other one on that file at once (:class:`Doorbell`).
Another process's publish wakes them through the wake-up sockets of :mod:`.wake`
(:meth:`Database.wake_others`); behind those, ``PRAGMA data_version`` is checked with a
backoff (1 ms, doubling up to 100 ms; up to 20 ms where this process cannot listen) while
something waits -- a cheap read, no lock taken. Checkpoints run on a thread of their own
(:mod:`.checkpoint`).
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ClassVar, TypeVar, cast

from .._waiters import Waiters, wait_future
from ..errors import BrokerError
from .checkpoint import BACKSTOP, Checkpointer
from .schema import busy, open_database, patiently
from .wake import Waker

__all__ = ["Connection", "Database", "Doorbell", "data_version", "sqlite_path"]

T = TypeVar("T")

_FIRST_CHECK = 0.001
_LAST_CHECK = 0.02
# While this process listens for other processes' wake-ups (see .wake), the data_version
# checks only back them up: they slow down to this.
_LISTENING_CHECK = 0.1

MESSAGES = b"m"
"""The wake-up topic of a commit that made messages ready."""
CONTROL = b"c"
"""The wake-up topic of a control command."""
RESULTS = b"r"
"""The wake-up topic of a record made terminal."""
FETCHING = MESSAGES + CONTROL
"""What a worker's waits listen for (one socket for both)."""


def sqlite_path(url: str) -> str:
    """The file of ``sqlite:///relative.db`` or ``sqlite:////absolute.db``."""
    rest = url.split("://", 1)[1].split("?", 1)[0]
    return rest[1:] if rest.startswith("/") else rest


class Doorbell:
    """The in-process wake-up of one file: every commit rings it."""

    _bells: dict[tuple[str, str], Doorbell] = {}
    _lock = threading.Lock()

    def __init__(self) -> None:
        self.waiters = Waiters()
        self.rings = 0

    def ring(self) -> None:
        """A commit happened: count it and wake every waiter."""
        self.rings += 1
        self.waiters.notify_all()

    @classmethod
    def of(cls, path: str, topic: str = "") -> Doorbell:
        """The doorbell of ``path`` (one per file and process), rung by every commit; with
        a ``topic``, one rung only by the writes of that topic (their callers ring it)."""
        key = (os.path.realpath(path), topic)
        with cls._lock:
            bell = cls._bells.get(key)
            if bell is None:
                bell = cls._bells[key] = Doorbell()
            return bell


class Database:
    """A backend's handle on the connection to one SQLite file.

    The backends of one process on the same file with the same ``busy_timeout`` (a broker
    and its result store) share one :class:`Connection`: one thread, one group commit, no
    lock contention between them. :meth:`open` and :meth:`close` count the handles; the
    last :meth:`close` closes the connection."""

    def __init__(self, path: str, busy_timeout: float) -> None:
        self.path = path
        self.busy_timeout = busy_timeout
        self.bell = Doorbell.of(path)
        self._shared: Connection | None = None
        self._lock = threading.Lock()

    @property
    def connected(self) -> bool:
        """True between :meth:`open` and :meth:`close`."""
        shared = self._shared
        return shared is not None and shared.connected

    async def open(self) -> None:
        """Open (and check, or create) the file; ConfigError names what is wrong."""
        with self._lock:
            shared = self._shared
            if shared is None:
                shared = self._shared = Connection.acquire(self.path, self.busy_timeout)
        try:
            await shared.open()
        except BaseException:
            with self._lock:
                if self._shared is shared:
                    self._shared = None
            await shared.release()
            raise

    async def close(self) -> None:
        """Let go of the connection (closed with its last handle). Idempotent."""
        with self._lock:
            shared, self._shared = self._shared, None
        if shared is not None:
            await shared.release()
        self.bell.waiters.notify_all()

    def _use(self) -> Connection:
        shared = self._shared
        if shared is None:
            raise BrokerError(f"SQLite database {self.path!r} is not connected")
        return shared

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(connection, *args)`` on the connection's thread."""
        return await self._use().run(fn, *args)

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        """:meth:`run` from any thread, blocking (on the calling thread)."""
        return self._use().call(fn, *args)

    async def write(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(connection, *args)`` in a write transaction (see :meth:`Connection.write`)."""
        return await self._use().write(fn, *args)

    def write_blocking(self, fn: Callable[..., T], *args: Any) -> T:
        """:meth:`write` from any thread, blocking: its own transaction, run on the
        calling thread."""
        return self._use().write_blocking(fn, *args)

    async def write_soon(self, fn: Callable[..., T], *args: Any) -> T:
        """:meth:`write`, but on the calling thread when the connection is idle (see
        :meth:`Connection.write_here`): for a short write whose latency matters."""
        shared = self._use()
        done, result = shared.write_here(fn, args)
        if done:
            return cast(T, result)
        return await shared.write(fn, *args)

    def statement_blocking(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(connection, *args)`` on the calling thread, outside a transaction (see
        :meth:`Connection.statement_blocking`): for a write of one statement."""
        return self._use().statement_blocking(fn, *args)

    def wake_others(self, topic: bytes = MESSAGES) -> None:
        """After a commit that made messages ready (or, with :data:`CONTROL`, added a
        control command; with :data:`RESULTS`, made records terminal): wake the processes
        waiting on this file for them."""
        shared = self._shared
        if shared is not None:
            shared.waker.notify(topic)

    async def data_version(self) -> int:
        """``PRAGMA data_version``: changes when another connection commits."""
        return await self.run(data_version)

    def rings(self) -> int:
        """The in-process commit count; take it *before* a read that may find nothing."""
        return self.bell.rings

    async def wait_for_change(
        self,
        rings: int,
        version: int,
        timeout: float,
        *,
        bell: Doorbell | None = None,
        first_check: float = _FIRST_CHECK,
        listen: bytes = b"",
    ) -> None:
        """Return when this process committed to the file since :meth:`rings` gave
        ``rings`` (or rang ``bell``, when given, since its count was ``rings``), or another
        process since ``data_version`` was ``version``, or after ``timeout`` seconds
        (whichever comes first), or when this handle is closed. ``data_version`` is checked
        after ``first_check`` seconds, then twice as long after each check, up to 20 ms.

        With ``listen``, the topics whose wake-ups other processes send (:data:`FETCHING`,
        :data:`RESULTS`; see :meth:`wake_others`), this process listens for them, and the
        checks, now only behind those, back off up to 100 ms."""
        bell = bell or self.bell
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0.0, timeout)
        fut = bell.waiters.register_async()
        pause = first_check
        shared = self._shared
        listening = bool(listen) and shared is not None and shared.listen(listen)
        last_check = max(first_check, _LISTENING_CHECK if listening else _LAST_CHECK)
        try:
            while bell.rings == rings:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return
                if await wait_future(fut, min(pause, remaining)):
                    return
                shared = self._shared
                if shared is None or not shared.connected or await shared.version() != version:
                    return
                pause = min(pause * 2, last_check)
        finally:
            bell.waiters.discard(fut)


class Connection:
    """The connection to one SQLite file on a dedicated thread, shared by the
    :class:`Database` handles of a process on that file (:meth:`acquire`)."""

    _open: ClassVar[dict[tuple[str, float], Connection]] = {}
    _registry = threading.Lock()

    def __init__(self, path: str, busy_timeout: float) -> None:
        self.path = path
        self.busy_timeout = busy_timeout
        self.bell = Doorbell.of(path)
        self.waker = Waker(path)
        self._key = (os.path.realpath(path), busy_timeout)
        self._users = 0
        self._conn: sqlite3.Connection | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        # Serialises every use of the connection (the worker thread, blocking callers).
        self._conn_lock = threading.Lock()
        # Writes waiting for the next group commit, and whether a drain is scheduled.
        self._pending: list[_Write] = []
        self._pending_lock = threading.Lock()
        self._draining = False
        # Checkpoints run on a thread of their own (see .checkpoint).
        self.checkpointer: Checkpointer | None = None
        self._changes = 0

    @property
    def connected(self) -> bool:
        """True between :meth:`open` and :meth:`close`."""
        return self._conn is not None

    def listen(self, topics: bytes) -> bool:
        """Listen for other processes' wake-ups for ``topics`` on the running loop (see
        :mod:`.wake`); True if this process does."""
        return self.waker.listen(topics, self._woken)

    def _woken(self, topics: set[bytes]) -> None:
        if MESSAGES in topics or RESULTS in topics:
            self.bell.ring()  # fetches and result waits wait on the file's bell
        if CONTROL in topics:
            Doorbell.of(self.path, "control").ring()

    @classmethod
    def acquire(cls, path: str, busy_timeout: float) -> Connection:
        """The connection of this process to ``path``, counted as used once more."""
        key = (os.path.realpath(path), busy_timeout)
        with cls._registry:
            shared = cls._open.get(key)
            if shared is None:
                shared = cls._open[key] = Connection(path, busy_timeout)
            shared._users += 1
            return shared

    async def release(self) -> None:
        """Used once less; closed when no handle uses it any more."""
        with Connection._registry:
            self._users -= 1
            last = self._users <= 0
            if last and Connection._open.get(self._key) is self:
                del Connection._open[self._key]
        if last:
            await self.close()

    async def open(self) -> None:
        """Open (and check, or create) the file; ConfigError names what is wrong."""
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(1, thread_name_prefix="taskflow-sqlite")
                self._draining = False
            executor = self._executor
        # On the connection's thread: handles opening at once open it once.
        await asyncio.get_running_loop().run_in_executor(executor, self._open_here)

    def _open_here(self) -> None:
        if self._conn is None:
            conn = open_database(self.path, self.busy_timeout)
            conn.execute("PRAGMA busy_timeout = 0")  # waits are :meth:`_patiently`'s
            conn.execute(f"PRAGMA wal_autocheckpoint = {BACKSTOP}")
            self._changes = conn.total_changes
            self.checkpointer = Checkpointer(self.path)
            self._conn = conn

    async def close(self) -> None:
        """Close the connection and stop the thread. Idempotent."""
        with self._lock:
            executor, self._executor = self._executor, None
            conn, self._conn = self._conn, None
        if executor is not None:
            if conn is not None:
                await asyncio.get_running_loop().run_in_executor(executor, self._close, conn)
            executor.shutdown(wait=False)
        checkpointer, self.checkpointer = self.checkpointer, None
        if checkpointer is not None:
            await asyncio.get_running_loop().run_in_executor(None, checkpointer.stop)
        self.waker.close()
        self.bell.waiters.notify_all()

    def _close(self, conn: sqlite3.Connection) -> None:
        with self._conn_lock:
            conn.close()
        # Writes queued after the last drain: nothing of theirs was written.
        with self._pending_lock:
            left, self._pending = self._pending, []
        _answer([(w, False, self._closed()) for w in left])

    def _closed(self) -> BrokerError:
        return BrokerError(f"SQLite database {self.path!r} is not connected")

    def _target(self) -> tuple[ThreadPoolExecutor, sqlite3.Connection]:
        executor, conn = self._executor, self._conn
        if executor is None or conn is None:
            raise self._closed()
        return executor, conn

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(connection, *args)`` on the connection's thread."""
        executor, conn = self._target()
        return await asyncio.get_running_loop().run_in_executor(
            executor, self._locked_guard, fn, conn, args
        )

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        """:meth:`run` from any thread, blocking (on the calling thread)."""
        _, conn = self._target()
        return self._locked_guard(fn, conn, args)

    async def write(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(connection, *args)`` in a write transaction (shared with the writes queued
        meanwhile, each in its own savepoint); answered after the commit, which rings the
        doorbell."""
        executor, _ = self._target()
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        with self._pending_lock:
            self._pending.append(_Write(fn, args, loop, fut))
            start, self._draining = not self._draining, True
        if start:
            try:
                executor.submit(self._drain)
            except RuntimeError:  # closed meanwhile
                with self._pending_lock:
                    self._draining = False
                raise self._closed() from None
        return await fut

    def write_here(self, fn: Callable[..., T], args: tuple[Any, ...]) -> tuple[bool, T | None]:
        """``fn(connection, *args)`` in its own transaction on the calling thread, if the
        connection is idle here (its thread has no write queued or running) and the
        file's write lock is free: ``(True, result)``; else ``(False, None)``, nothing
        done. Saves the two thread hops of :meth:`write` (a worker's fetch after a
        wake-up); never waits for a lock."""
        conn = self._conn
        if conn is None or self._pending or self._draining:
            return False, None
        if not self._conn_lock.acquire(blocking=False):
            return False, None
        try:
            if self._pending or self._draining:
                return False, None
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                if busy(exc):
                    return False, None  # another process writes: wait on the thread
                raise self._error(exc) from None
            result = self._within(fn, conn, args)
            changed = self._wrote(conn)
        finally:
            self._conn_lock.release()
        if changed:
            self.bell.ring()
        return True, result

    def write_blocking(self, fn: Callable[..., T], *args: Any) -> T:
        """:meth:`write` from any thread, blocking: its own transaction, run on the
        calling thread."""
        _, conn = self._target()
        with self._conn_lock:
            result = self._transaction(fn, conn, args)
            self._wrote(conn)
        self.bell.ring()
        return result

    def statement_blocking(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(connection, *args)`` on the calling thread, outside a transaction, tried
        again while another connection holds the write lock; rings the doorbell after it.

        For a write of one statement: SQLite runs a statement outside a transaction in
        one of its own, committed before the statement returns (as durable as a ``BEGIN
        IMMEDIATE ... COMMIT`` of it, without the two extra statements). A statement
        that fails on a busy lock wrote nothing, so it is simply run again. ``fn`` must
        run at most one writing statement, or leave the file unchanged when a later one
        fails."""
        conn = self._conn
        if conn is None:
            raise self._closed()
        with self._conn_lock:
            try:
                result = fn(conn, *args)
            except sqlite3.OperationalError as exc:
                if not busy(exc):
                    raise self._error(exc) from None
                result = self._guard(fn, conn, args)  # wrote nothing: again, patiently
            self._wrote(conn)
        self.bell.ring()
        return result

    def _wrote(self, conn: sqlite3.Connection) -> bool:
        """After a commit (under the connection's lock): count it towards the next
        checkpoint; True if it changed rows."""
        changes = conn.total_changes
        rows, self._changes = changes - self._changes, changes
        checkpointer = self.checkpointer
        if checkpointer is not None:
            checkpointer.committed(rows)
        return rows != 0

    def _locked_guard(
        self, fn: Callable[..., T], conn: sqlite3.Connection, args: tuple[Any, ...]
    ) -> T:
        with self._conn_lock:
            return self._guard(fn, conn, args)

    def _guard(self, fn: Callable[..., T], conn: sqlite3.Connection, args: tuple[Any, ...]) -> T:
        try:
            return self._patiently(fn, conn, *args)  # a read: nothing to undo before a retry
        except sqlite3.OperationalError as exc:
            raise self._error(exc) from None

    def _error(self, exc: sqlite3.Error) -> BrokerError:
        return BrokerError(f"SQLite database {self.path!r}: {exc}")

    def _transaction(
        self, fn: Callable[..., T], conn: sqlite3.Connection, args: tuple[Any, ...]
    ) -> T:
        try:
            self._begin(conn)
        except sqlite3.OperationalError as exc:
            raise self._error(exc) from None
        return self._within(fn, conn, args)

    def _within(self, fn: Callable[..., T], conn: sqlite3.Connection, args: tuple[Any, ...]) -> T:
        """``fn`` in the transaction just begun, then ``COMMIT``; rolled back if it raises."""
        try:
            result = fn(conn, *args)
            conn.execute("COMMIT")
        except BaseException as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            if isinstance(exc, sqlite3.OperationalError):
                raise self._error(exc) from None
            raise
        return result

    def _begin(self, conn: sqlite3.Connection) -> None:
        self._patiently(conn.execute, "BEGIN IMMEDIATE")

    def _patiently(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)``, tried again after short pauses while another connection holds a
        lock the statement needs (SQLITE_BUSY), for up to ``busy_timeout`` seconds.

        The connection's own busy handler is off (``busy_timeout`` 0 after opening): it
        sleeps 1 ms, then 2, 5, 10 ms ..., far longer than a write here holds the lock."""
        return patiently(
            fn, *args, busy_timeout=self.busy_timeout, first=_FIRST_RETRY, last=_LAST_RETRY
        )

    # -- group commit (on the connection's thread) -----------------------------------
    def _drain(self) -> None:
        while True:
            with self._pending_lock:
                batch = self._pending[:_MAX_BATCH]
                del self._pending[:_MAX_BATCH]
                if not batch:
                    self._draining = False
                    return
            try:
                conn = self._conn
                if conn is None:
                    _answer([(w, False, self._closed()) for w in batch])
                    continue
                with self._conn_lock:
                    answers = self._commit(conn, batch)
                    changed = self._wrote(conn)
            except BaseException as exc:  # not of SQLite's: answer, then stop draining
                _answer([(w, False, exc) for w in batch])
                with self._pending_lock:
                    self._draining = False
                raise
            # Only a commit that changed rows rings: a fetch that found nothing must not
            # wake its own wait (it would take again at once, and again, on an idle file).
            if changed:
                self.bell.ring()
            _answer(answers)

    def _commit(self, conn: sqlite3.Connection, batch: list[_Write]) -> list[_Answer]:
        """Run ``batch`` in one transaction; each write's result or error.

        First without savepoints (the common case: no write raises). If one raises, that
        transaction is rolled back and the batch runs again, each write in a savepoint, so
        that only the failing write's changes are undone. The functions are run again
        only on a rolled-back file: they act on the connection alone."""
        if len(batch) == 1:  # the transaction is the write's own
            w = batch[0]
            try:
                return [(w, True, self._transaction(w.fn, conn, w.args))]
            except Exception as exc:
                return [(w, False, exc)]
        try:
            self._begin(conn)
        except sqlite3.Error as exc:
            return [(w, False, self._error(exc)) for w in batch]
        try:
            answers: list[_Answer] = [(w, True, w.fn(conn, *w.args)) for w in batch]
            conn.execute("COMMIT")
            return answers
        except Exception as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            if _fatal(exc):
                return [(w, False, self._error_of(exc)) for w in batch]
        return self._commit_apart(conn, batch)

    def _commit_apart(self, conn: sqlite3.Connection, batch: list[_Write]) -> list[_Answer]:
        """``batch`` in one transaction, each write in its own savepoint."""
        try:
            self._begin(conn)
        except sqlite3.Error as exc:
            return [(w, False, self._error(exc)) for w in batch]
        answers: list[_Answer] = []
        try:
            for w in batch:
                conn.execute("SAVEPOINT taskflow_write")
                try:
                    result = w.fn(conn, *w.args)
                except Exception as exc:
                    if _fatal(exc):
                        raise  # the transaction is suspect: nothing of the batch commits
                    conn.execute("ROLLBACK TO taskflow_write")
                    answers.append((w, False, exc))
                else:
                    answers.append((w, True, result))
                conn.execute("RELEASE taskflow_write")
            conn.execute("COMMIT")
        except Exception as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            return [(w, False, self._error_of(exc)) for w in batch]
        return answers

    def _error_of(self, exc: Exception) -> Exception:
        return self._error(exc) if isinstance(exc, sqlite3.OperationalError) else exc

    async def version(self) -> int:
        """``PRAGMA data_version``, read on the calling thread when the connection is free
        (a cheap read that never waits: a poll costs no thread switch), through the
        connection's thread otherwise."""
        conn = self._conn
        if conn is not None and self._conn_lock.acquire(blocking=False):
            try:
                return data_version(conn)
            except sqlite3.Error:
                pass  # e.g. busy while another process recovers the file: ask the thread
            finally:
                self._conn_lock.release()
        return await self.run(data_version)


_FIRST_RETRY = 0.00005  # seconds between attempts at the write lock: 50 us, doubling,
_LAST_RETRY = 0.002  # up to 2 ms

_MAX_BATCH = 256  # writes per group commit: bounds how long one holds the file's write lock


class _Write:
    """A write waiting for the next group commit."""

    __slots__ = ("args", "fn", "fut", "loop")

    def __init__(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        loop: asyncio.AbstractEventLoop,
        fut: asyncio.Future[Any],
    ) -> None:
        self.fn = fn
        self.args = args
        self.loop = loop
        self.fut = fut


_Answer = tuple[_Write, bool, Any]


def _fatal(exc: Exception) -> bool:
    """An error of the connection or the file (not of one write's statements)."""
    return isinstance(exc, sqlite3.OperationalError | sqlite3.InternalError) or (
        type(exc) is sqlite3.DatabaseError
    )


def _answer(answers: list[_Answer]) -> None:
    """Hand each write its outcome on its own loop (one wake-up per loop)."""
    by_loop: dict[asyncio.AbstractEventLoop, list[_Answer]] = {}
    for answer in answers:
        by_loop.setdefault(answer[0].loop, []).append(answer)
    for loop, items in by_loop.items():
        if not loop.is_closed():
            loop.call_soon_threadsafe(_resolve, items)


def _resolve(answers: list[_Answer]) -> None:
    for w, ok, value in answers:
        if w.fut.done():
            continue
        if ok:
            w.fut.set_result(value)
        else:
            w.fut.set_exception(value)


def data_version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA data_version").fetchone()[0])
