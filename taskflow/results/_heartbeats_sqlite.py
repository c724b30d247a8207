"""Worker heartbeats and the audit trail in the SQLite result store's file.

Tables ``worker_heartbeats`` (one row per worker id) and ``audit_log`` (one row per entry),
each row with its expiry (epoch seconds on the store's clock). Reads skip expired rows;
every write deletes them first, so the tables hold no more than the live entries plus
what expired since the last write.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

__all__ = ["add_audit", "audit", "put_worker", "remove_worker", "workers"]


def put_worker(conn: sqlite3.Connection, info: dict[str, Any], expires: float, now: float) -> None:
    """Upsert ``info`` under its id until ``expires``; prune expired heartbeats."""
    conn.execute("DELETE FROM worker_heartbeats WHERE expires <= ?", (now,))
    conn.execute(
        "INSERT OR REPLACE INTO worker_heartbeats (id, data, expires) VALUES (?, ?, ?)",
        (str(info["id"]), json.dumps(info), expires),
    )


def remove_worker(conn: sqlite3.Connection, worker_id: str) -> None:
    """Delete a worker's row."""
    conn.execute("DELETE FROM worker_heartbeats WHERE id = ?", (worker_id,))


def workers(conn: sqlite3.Connection, now: float) -> list[dict[str, Any]]:
    """The live heartbeats, by id."""
    rows = conn.execute(
        "SELECT data FROM worker_heartbeats WHERE expires > ? ORDER BY id", (now,)
    ).fetchall()
    return [json.loads(row[0]) for row in rows]


def add_audit(conn: sqlite3.Connection, entry: dict[str, Any], expires: float, now: float) -> None:
    """Append ``entry`` until ``expires``; prune expired entries."""
    conn.execute("DELETE FROM audit_log WHERE expires <= ?", (now,))
    conn.execute(
        "INSERT INTO audit_log (at, data, expires) VALUES (?, ?, ?)",
        (float(entry.get("at") or now), json.dumps(entry), expires),
    )


def audit(conn: sqlite3.Connection, limit: int, now: float) -> list[dict[str, Any]]:
    """Up to ``limit`` live entries, newest first (by ``at``, then by order of writing)."""
    rows = conn.execute(
        "SELECT data FROM audit_log WHERE expires > ? ORDER BY at DESC, seq DESC LIMIT ?",
        (now, max(0, limit)),
    ).fetchall()
    return [json.loads(row[0]) for row in rows]
