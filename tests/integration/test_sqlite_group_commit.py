"""The SQLite connection's write path: writes that queue up commit together, yet each
caller gets its own outcome; blocking writers on many threads share the connection; the
write lock held by another connection is waited for up to ``busy_timeout``; a fetch on a
deep queue walks the ready index instead of sorting the queue; a broker and its result store
on one file in one process share the connection."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from taskflow._sqlite.connection import Database
from taskflow.brokers import _sqlite_ops as ops
from taskflow.brokers.base import Message
from taskflow.brokers.sqlite import SqliteBroker
from taskflow.errors import BrokerError, QueueFull
from taskflow.results.sqlite import SqliteResultStore


def _insert_note(conn: sqlite3.Connection, key: str) -> str:
    conn.execute("INSERT INTO kv (key, value) VALUES (?, 'x')", (key,))
    return key


def _insert_then_fail(conn: sqlite3.Connection, key: str) -> None:
    conn.execute("INSERT INTO kv (key, value) VALUES (?, 'x')", (key,))
    raise ValueError(f"write {key} refused")


def _keys(conn: sqlite3.Connection) -> set[str]:
    return {r[0] for r in conn.execute("SELECT key FROM kv")}


def test_queued_writes_commit_together_and_a_failing_one_undoes_only_its_own(
    tmp_path: Path,
) -> None:
    entered, gate = threading.Event(), threading.Event()

    def held(conn: sqlite3.Connection) -> None:
        entered.set()
        gate.wait(10)  # keeps the connection's thread busy while the others queue up

    async def body() -> None:
        db = Database(str(tmp_path / "t.db"), 5.0)
        await db.open()
        try:
            first = asyncio.ensure_future(db.write(held))
            assert await asyncio.to_thread(entered.wait, 10)  # on the thread now
            queued = [
                asyncio.ensure_future(db.write(_insert_note, "a")),
                asyncio.ensure_future(db.write(_insert_then_fail, "b")),
                asyncio.ensure_future(db.write(_insert_note, "c")),
            ]
            await asyncio.sleep(0)  # all three are queued behind it
            rings = db.rings()
            gate.set()
            await first
            outcomes = await asyncio.gather(*queued, return_exceptions=True)
            assert outcomes[0] == "a" and outcomes[2] == "c"
            assert isinstance(outcomes[1], ValueError)
            assert "write b refused" in str(outcomes[1])
            assert await db.run(_keys) == {"a", "c"}
            # One ring for the three queued; none for the held write, which changed no row.
            assert db.rings() == rings + 1
        finally:
            gate.set()
            await db.close()

    asyncio.run(body())


def test_a_full_queue_refuses_its_publish_without_undoing_a_concurrent_one(
    tmp_path: Path,
) -> None:
    async def body() -> None:
        broker = SqliteBroker(f"sqlite:///{tmp_path / 't.db'}")
        await broker.connect()
        try:
            await broker.declare("small", max_length=1)
            await broker.declare("big")
            results = await asyncio.gather(
                broker.publish([Message("s1", "small", b"1", 0, None, 1)]),
                broker.publish([Message(f"s{i}", "small", b"2", 0, None, 1) for i in (2, 3)]),
                broker.publish([Message("b1", "big", b"3", 0, None, 1)]),
                return_exceptions=True,
            )
            assert results[0] is None and results[2] is None
            assert isinstance(results[1], QueueFull)
            assert (await broker.depth("small"))["ready"] == 1
            assert (await broker.depth("big"))["ready"] == 1
        finally:
            await broker.close()

    asyncio.run(body())


def test_blocking_publishes_from_many_threads_all_land_while_a_worker_fetches(
    tmp_path: Path,
) -> None:
    path = tmp_path / "t.db"
    threads, each = 6, 150

    async def body() -> None:
        broker = SqliteBroker(f"sqlite:///{path}")
        await broker.connect()
        try:

            def produce(n: int) -> None:
                for i in range(each):
                    broker.publish_blocking([Message(f"{n}-{i}", "q", b"x", 0, None, 1)])

            loop = asyncio.get_running_loop()
            producers = [loop.run_in_executor(None, produce, n) for n in range(threads)]
            seen: set[str] = set()
            while len(seen) < threads * each:
                got = await broker.fetch(["q"], 50, 5.0)
                assert got or not all(p.done() for p in producers)
                for delivery in got:
                    assert await delivery.ack()
                    seen.add(delivery.id)
            await asyncio.gather(*producers)
            assert seen == {f"{n}-{i}" for n in range(threads) for i in range(each)}
        finally:
            await broker.close()

    asyncio.run(body())
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert conn.execute("SELECT count(*) FROM messages").fetchone()[0] == 0
    finally:
        conn.close()


def test_a_write_waits_for_another_writer_and_fails_naming_the_file_after_busy_timeout(
    tmp_path: Path,
) -> None:
    path = tmp_path / "t.db"

    async def body() -> None:
        db = Database(str(path), 0.3)
        await db.open()
        other = sqlite3.connect(path, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")  # another writer holds the lock
            started = time.monotonic()
            with pytest.raises(BrokerError) as info:
                await db.write(_insert_note, "late")
            assert time.monotonic() - started >= 0.3
            assert str(path) in str(info.value)
            assert "locked" in str(info.value)
            other.execute("COMMIT")
            assert await db.write(_insert_note, "now") == "now"  # free again: it writes
        finally:
            other.close()
            await db.close()

    asyncio.run(body())


def test_a_fetch_on_a_deep_queue_reads_the_ready_index_in_order_without_sorting(
    tmp_path: Path,
) -> None:
    async def body() -> None:
        broker = SqliteBroker(f"sqlite:///{tmp_path / 't.db'}")
        await broker.connect()
        try:
            await broker.publish([Message(f"m{i}", "q", b"x", i % 3, None, 1) for i in range(3000)])
            got = await broker.fetch(["q"], 5, 0)
            # priority first (2 is served before 1 and 0), then publish order
            assert [d.id for d in got] == ["m2", "m5", "m8", "m11", "m14"]
        finally:
            await broker.close()

    asyncio.run(body())
    conn = sqlite3.connect(tmp_path / "t.db")
    try:
        plan = conn.execute("EXPLAIN QUERY PLAN " + ops.TAKE_SQL, ("q", 0.0, 5)).fetchall()
    finally:
        conn.close()
    details = " ".join(str(row[-1]) for row in plan)
    assert "messages_ready" in details and "TEMP B-TREE" not in details


def test_a_broker_and_its_result_store_on_one_file_commit_together_and_close_apart(
    tmp_path: Path,
) -> None:
    path = tmp_path / "t.db"
    entered, gate = threading.Event(), threading.Event()

    def held(conn: sqlite3.Connection) -> None:
        entered.set()
        gate.wait(10)

    async def body() -> None:
        broker = SqliteBroker(f"sqlite:///{path}")
        store = SqliteResultStore(f"sqlite:///{path}")
        other = Database(str(path), 5.0)  # a third handle on the same connection
        await broker.connect()
        await store.connect()
        await other.open()
        try:
            await broker.publish([Message("t1", "q", b"x", 0, None, 1)])
            (delivery,) = await broker.fetch(["q"], 1, 0)
            first = asyncio.ensure_future(other.write(held))
            assert await asyncio.to_thread(entered.wait, 10)
            rings = other.rings()
            record = asyncio.ensure_future(store.update("t1", {"status": "SUCCEEDED"}, None))
            ack = asyncio.ensure_future(delivery.ack())
            await asyncio.sleep(0)  # both queued behind the held write
            gate.set()
            await first
            assert await ack
            assert (await record) == {"id": "t1", "status": "SUCCEEDED"}
            # the record and the ack in one transaction (the held write changed no row)
            assert other.rings() == rings + 1
            await broker.close()
            assert (await store.get("t1")) == {"id": "t1", "status": "SUCCEEDED"}
        finally:
            gate.set()
            await broker.close()
            await store.close()
            await other.close()
        assert not other.connected
        with pytest.raises(BrokerError):
            await store.get("t1")

    asyncio.run(body())


def test_a_blocking_publish_of_one_message_keeps_bounds_due_times_and_replacement(
    tmp_path: Path,
) -> None:
    async def body() -> None:
        broker = SqliteBroker(f"sqlite:///{tmp_path / 't.db'}")
        await broker.connect()
        try:
            await broker.declare("small", max_length=2)
            for mid in ("s1", "s2"):
                broker.publish_blocking([Message(mid, "small", b"x", 0, None, 1)])
            with pytest.raises(QueueFull):
                broker.publish_blocking([Message("s3", "small", b"x", 0, None, 1)])
            assert (await broker.depth("small"))["ready"] == 2
            await broker.declare("small", max_length=None)  # the bound is lifted
            broker.publish_blocking([Message("s3", "small", b"x", 0, None, 1)])
            assert (await broker.depth("small"))["ready"] == 3

            later = time.time() + 60
            broker.publish_blocking([Message("later", "open", b"l", 0, later, 1)])
            broker.publish_blocking([Message("now", "open", b"old", 0, None, 1)])
            broker.publish_blocking([Message("now", "open", b"new", 0, None, 1)])  # replaces
            depth = await broker.depth("open")
            assert (depth["ready"], depth["scheduled"]) == (1, 1)
            assert await broker.peek("open") == [b"new"]
        finally:
            await broker.close()

    asyncio.run(body())


def test_a_blocking_publish_waits_for_another_writer_and_fails_alone_after_busy_timeout(
    tmp_path: Path,
) -> None:
    path = tmp_path / "t.db"

    async def body() -> None:
        broker = SqliteBroker(f"sqlite:///{path}", busy_timeout=0.3)
        await broker.connect()
        other = sqlite3.connect(path, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")  # another writer holds the lock
            started = time.monotonic()
            with pytest.raises(BrokerError) as info:
                broker.publish_blocking([Message("late", "q", b"x", 0, None, 1)])
            assert time.monotonic() - started >= 0.3
            assert str(path) in str(info.value)
            other.execute("COMMIT")
            broker.publish_blocking([Message("now", "q", b"x", 0, None, 1)])
            assert [d.id for d in await broker.fetch(["q"], 10, 0)] == ["now"]
        finally:
            other.close()
            await broker.close()

    asyncio.run(body())
