"""One SQLite connection per backend, used from its own thread.

Every statement runs on the backend's single worker thread, so the event loop never
blocks on a busy lock (a writer in another process): :meth:`Database.run` hands a
function over and awaits it; :meth:`Database.call` does the same from any thread.
:meth:`Database.write` runs a function inside ``BEGIN IMMEDIATE ... COMMIT``: short write
transactions that either commit whole or roll back.

Wake-ups: a commit made through any :class:`Database` of this process on a file wakes the
waiters of every other one on that file at once (:class:`Doorbell`); a commit made by
another process is seen through ``PRAGMA data_version``, checked with a short backoff
(1 ms, doubling up to 20 ms) while something waits -- a cheap read, no lock taken.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from .._waiters import Waiters, wait_future
from ..errors import BrokerError
from .schema import open_database

__all__ = ["Database", "Doorbell", "data_version", "sqlite_path"]

T = TypeVar("T")

_FIRST_CHECK = 0.001
_LAST_CHECK = 0.02


def sqlite_path(url: str) -> str:
    """The file of ``sqlite:///relative.db`` or ``sqlite:////absolute.db``."""
    rest = url.split("://", 1)[1].split("?", 1)[0]
    return rest[1:] if rest.startswith("/") else rest


class Doorbell:
    """The in-process wake-up of one file: every commit rings it."""

    _bells: dict[str, Doorbell] = {}
    _lock = threading.Lock()

    def __init__(self) -> None:
        self.waiters = Waiters()
        self.rings = 0

    def ring(self) -> None:
        """A commit happened: count it and wake every waiter."""
        self.rings += 1
        self.waiters.notify_all()

    @classmethod
    def of(cls, path: str) -> Doorbell:
        """The doorbell of ``path`` (one per file and process)."""
        key = os.path.realpath(path)
        with cls._lock:
            bell = cls._bells.get(key)
            if bell is None:
                bell = cls._bells[key] = Doorbell()
            return bell


class Database:
    """A connection to one SQLite file on a dedicated thread."""

    def __init__(self, path: str, busy_timeout: float) -> None:
        self.path = path
        self.busy_timeout = busy_timeout
        self.bell = Doorbell.of(path)
        self._conn: sqlite3.Connection | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    @property
    def connected(self) -> bool:
        """True between :meth:`open` and :meth:`close`."""
        return self._conn is not None

    async def open(self) -> None:
        """Open (and check, or create) the file; ConfigError names what is wrong."""
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(1, thread_name_prefix="taskflow-sqlite")
        if self._conn is None:
            conn = await asyncio.get_running_loop().run_in_executor(
                self._executor, open_database, self.path, self.busy_timeout
            )
            self._conn = conn

    async def close(self) -> None:
        """Close the connection and stop the thread. Idempotent."""
        with self._lock:
            executor, self._executor = self._executor, None
            conn, self._conn = self._conn, None
        if executor is not None:
            if conn is not None:
                await asyncio.get_running_loop().run_in_executor(executor, conn.close)
            executor.shutdown(wait=False)
        self.bell.waiters.notify_all()

    def _target(self) -> tuple[ThreadPoolExecutor, sqlite3.Connection]:
        executor, conn = self._executor, self._conn
        if executor is None or conn is None:
            raise BrokerError(f"SQLite database {self.path!r} is not connected")
        return executor, conn

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(connection, *args)`` on the connection's thread."""
        executor, conn = self._target()
        return await asyncio.get_running_loop().run_in_executor(
            executor, self._guard, fn, conn, args
        )

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        """:meth:`run` from any thread, blocking."""
        executor, conn = self._target()
        return executor.submit(self._guard, fn, conn, args).result()

    async def write(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(connection, *args)`` in one write transaction; rings the doorbell."""
        executor, conn = self._target()
        return await asyncio.get_running_loop().run_in_executor(
            executor, self._transaction, fn, conn, args
        )

    def write_blocking(self, fn: Callable[..., T], *args: Any) -> T:
        """:meth:`write` from any thread, blocking."""
        executor, conn = self._target()
        return executor.submit(self._transaction, fn, conn, args).result()

    def _guard(self, fn: Callable[..., T], conn: sqlite3.Connection, args: tuple[Any, ...]) -> T:
        try:
            return fn(conn, *args)
        except sqlite3.OperationalError as exc:
            raise BrokerError(f"SQLite database {self.path!r}: {exc}") from None

    def _transaction(
        self, fn: Callable[..., T], conn: sqlite3.Connection, args: tuple[Any, ...]
    ) -> T:
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            raise BrokerError(f"SQLite database {self.path!r}: {exc}") from None
        try:
            result = fn(conn, *args)
            conn.execute("COMMIT")
        except BaseException as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            if isinstance(exc, sqlite3.OperationalError):
                raise BrokerError(f"SQLite database {self.path!r}: {exc}") from None
            raise
        self.bell.ring()
        return result

    async def data_version(self) -> int:
        """``PRAGMA data_version``: changes when another connection commits."""
        return await self.run(data_version)

    def rings(self) -> int:
        """The in-process commit count; take it *before* a read that may find nothing."""
        return self.bell.rings

    async def wait_for_change(self, rings: int, version: int, timeout: float) -> None:
        """Return when this process committed to the file since :meth:`rings` gave
        ``rings``, or another process since ``data_version`` was ``version``, or after
        ``timeout`` seconds (whichever comes first)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0.0, timeout)
        fut = self.bell.waiters.register_async()
        pause = _FIRST_CHECK
        try:
            while self.bell.rings == rings:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return
                if await wait_future(fut, min(pause, remaining)):
                    return
                if not self.connected or await self.data_version() != version:
                    return
                pause = min(pause * 2, _LAST_CHECK)
        finally:
            self.bell.waiters.discard(fut)


def data_version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA data_version").fetchone()[0])
