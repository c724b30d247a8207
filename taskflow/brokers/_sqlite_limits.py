"""The SQLite broker's limiter: shared limits in the broker's file, each one short write
transaction (``BEGIN IMMEDIATE``), so the processes on the file take turns.

Tables (created on first use):

* ``limit_tokens (key, tat)``: the GCRA theoretical arrival time per task (epoch seconds)
* ``limit_permits (key, holder, expires)``: the permit holders per task and their expiry

Time is the broker's clock (wall time): every process on one host reads the same clock.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from .._sqlite.connection import Database
from ..clock import Clock
from .limits import ClusterLimiter, gcra

__all__ = ["SqliteLimiter"]

T = TypeVar("T")

_DDL = (
    "CREATE TABLE IF NOT EXISTS limit_tokens (key TEXT PRIMARY KEY, tat REAL NOT NULL)",
    "CREATE TABLE IF NOT EXISTS limit_permits (key TEXT NOT NULL, holder TEXT NOT NULL, "
    "expires REAL NOT NULL, PRIMARY KEY (key, holder))",
)


class SqliteLimiter(ClusterLimiter):
    """Limits in the broker's database (connect the broker first)."""

    def __init__(self, db: Database, lease: float, clock: Clock) -> None:
        self.lease = lease
        self._db = db
        self._clock = clock
        self._created = False

    async def _write(self, fn: Callable[..., T], *args: Any) -> T:
        if not self._created:
            await self._db.write(_create)
            self._created = True
        return await self._db.write(fn, *args)

    async def take_token(self, key: str, rate: float, burst: int) -> float:
        """GCRA in one write transaction."""
        return await self._write(_take_token, key, self._clock.time(), rate, burst)

    async def acquire(self, key: str, holder: str, limit: int) -> float:
        """A permit row, after deleting the expired ones."""
        return await self._write(_acquire, key, holder, limit, (self._clock.time(), self.lease))

    async def renew(self, key: str, holders: Sequence[str]) -> list[bool]:
        """Extend the unexpired permits of ``holders``."""
        return await self._write(_renew, key, list(holders), self._clock.time(), self.lease)

    async def release(self, key: str, holder: str) -> None:
        """Delete ``holder``'s permit row."""
        await self._write(_release, key, holder)


def _create(conn: sqlite3.Connection) -> None:
    for statement in _DDL:
        conn.execute(statement)


def _take_token(conn: sqlite3.Connection, key: str, now: float, rate: float, burst: int) -> float:
    row = conn.execute("SELECT tat FROM limit_tokens WHERE key = ?", (key,)).fetchone()
    wait, tat = gcra(None if row is None else float(row[0]), now, rate, burst)
    if tat is not None:
        conn.execute(
            "INSERT INTO limit_tokens (key, tat) VALUES (?, ?) "
            "ON CONFLICT (key) DO UPDATE SET tat = excluded.tat",
            (key, tat),
        )
    return float(wait)


def _acquire(
    conn: sqlite3.Connection, key: str, holder: str, limit: int, when: tuple[float, float]
) -> float:
    now, lease = when
    conn.execute("DELETE FROM limit_permits WHERE key = ? AND expires <= ?", (key, now))
    rows = conn.execute(
        "SELECT holder, expires FROM limit_permits WHERE key = ? ORDER BY expires", (key,)
    ).fetchall()
    if any(row[0] == holder for row in rows) or len(rows) < limit:
        conn.execute(
            "INSERT INTO limit_permits (key, holder, expires) VALUES (?, ?, ?) "
            "ON CONFLICT (key, holder) DO UPDATE SET expires = excluded.expires",
            (key, holder, now + lease),
        )
        return 0.0
    return max(0.001, float(rows[0][1]) - now)


def _renew(
    conn: sqlite3.Connection, key: str, holders: list[str], now: float, lease: float
) -> list[bool]:
    renewed = []
    for holder in holders:
        cur = conn.execute(
            "UPDATE limit_permits SET expires = ? WHERE key = ? AND holder = ? AND expires > ?",
            (now + lease, key, holder, now),
        )
        renewed.append(cur.rowcount == 1)
    return renewed


def _release(conn: sqlite3.Connection, key: str, holder: str) -> None:
    conn.execute("DELETE FROM limit_permits WHERE key = ? AND holder = ?", (key, holder))
