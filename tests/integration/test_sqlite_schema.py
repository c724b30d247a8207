"""Schema versions of the SQLite file: a file written by version 1 (every message in the
``(state, due)`` index) is upgraded when opened, and its messages are delivered as before."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

from taskflow.brokers.base import Message
from taskflow.brokers.sqlite import SqliteBroker

# What version 1 wrote: the due index over every message, and the version number.
_V1_INDEX = "CREATE INDEX messages_due ON messages (state, due)"
_INSERT = (
    "INSERT INTO messages (id, queue, body, priority, max_deliveries, deliveries, state, due,"
    " token) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


async def _open(path: Path) -> SqliteBroker:
    broker = SqliteBroker(f"sqlite:///{path}", lease=30.0)
    await broker.connect()
    return broker


def _make_version_1_file(path: Path, queue: str) -> None:
    async def create() -> None:
        await (await _open(path)).close()

    asyncio.run(create())
    now = time.time()
    with sqlite3.connect(path) as conn:
        conn.execute("DROP INDEX messages_due")
        conn.execute(_V1_INDEX)
        conn.execute("UPDATE taskflow_meta SET value = '1' WHERE key = 'schema_version'")
        conn.executemany(
            _INSERT,
            [  # version 1 stored the publish time as ``due`` of a ready message
                ("first", queue, b"a", 0, 1, 0, "waiting", now - 10, 0),
                ("urgent", queue, b"b", 5, 1, 0, "waiting", now - 5, 0),
                ("later", queue, b"c", 0, 1, 0, "waiting", now + 3600, 0),
                ("lost", queue, b"d", 0, 3, 1, "inflight", now - 1, 7),  # lease ran out
            ],
        )
    conn.close()


def test_a_version_1_file_is_upgraded_and_keeps_its_messages_and_their_order(
    tmp_path: Path,
) -> None:
    path = tmp_path / "old.db"
    queue = "schema-upgrade"
    _make_version_1_file(path, queue)

    async def body() -> tuple[list[str], dict[str, int]]:
        broker = await _open(path)
        try:
            got = await broker.fetch([queue], 10, 0)
            for delivery in got:
                assert await delivery.ack()
            return [d.id for d in got], await broker.depth(queue)
        finally:
            await broker.close()

    ids, depth = asyncio.run(body())
    # Priority first, then publish order; the expired lease is delivered again; the
    # delayed message is still delayed.
    assert ids == ["urgent", "first", "lost"]
    assert depth["scheduled"] == 1 and depth["ready"] == 0 and depth["inflight"] == 0
    with sqlite3.connect(path) as conn:
        version = conn.execute(
            "SELECT value FROM taskflow_meta WHERE key = 'schema_version'"
        ).fetchone()
        (index,) = conn.execute(
            "SELECT sql FROM sqlite_master WHERE name = 'messages_due'"
        ).fetchone()
        check = conn.execute("PRAGMA integrity_check").fetchall()
    conn.close()
    assert version == ("2",)
    assert "WHERE due > 0" in index
    assert check == [("ok",)]


def test_messages_published_handed_back_and_leased_keep_the_file_consistent(
    tmp_path: Path,
) -> None:
    """Ready messages are left out of the due index, leased and delayed ones are in it:
    SQLite's own check finds every index entry matching its row after each kind of write."""
    path = tmp_path / "cycle.db"
    queue = "schema-cycle"

    async def body() -> list[str]:
        broker = await _open(path)
        try:
            await broker.publish(
                [
                    Message("now", queue, b"x", 0, None, 3),
                    Message("soon", queue, b"y", 0, time.time() + 0.05, 3),
                ]
            )
            first = await broker.fetch([queue], 1, 0)
            assert [d.id for d in first] == ["now"]
            assert await first[0].nack(requeue=True)  # handed back: due 0
            again = await broker.fetch([queue], 1, 0)
            assert [d.id for d in again] == ["now"]
            assert await again[0].retry(b"x2", 0.0, max_deliveries=3)
            seen = []
            while len(seen) < 2:  # "soon" comes due while the fetch waits
                got = await broker.fetch([queue], 2, 5.0)
                for d in got:
                    seen.append(d.id)
                    assert await d.ack()
            return sorted(seen)
        finally:
            await broker.close()

    assert asyncio.run(body()) == ["now", "soon"]
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert conn.execute("SELECT count(*) FROM messages").fetchone() == (0,)
    conn.close()
