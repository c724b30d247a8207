"""How a fetch and a result wait on an SQLite file wait, and what wakes them.

An idle fetch waits without taking again and again; a message published by another
process wakes it through the wake-up sockets beside the file (not only through the
``data_version`` checks behind them), and a record finished by another process wakes a
result wait; a socket left by a killed process is removed; a control command wakes control
readers only; checkpoints run on their own thread.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sqlite3
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from taskflow._sqlite import checkpoint, connection
from taskflow._sqlite.connection import CONTROL, FETCHING, MESSAGES, RESULTS, Database, Doorbell
from taskflow._sqlite.wake import Waker
from taskflow.brokers import _sqlite_ops as ops
from taskflow.brokers.base import Message
from taskflow.brokers.sqlite import SqliteBroker
from taskflow.results.sqlite import SqliteResultStore
from tests.integration.redis_helpers import ROOT

pytestmark = pytest.mark.skipif(not hasattr(socket, "AF_UNIX"), reason="no Unix sockets")


def _counting_takes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    takes: list[int] = []
    real = ops.take

    def take(*args: Any) -> Any:
        takes.append(1)
        return real(*args)

    monkeypatch.setattr(ops, "take", take)
    return takes


async def _woken_by_another_process(
    db: Database, wait: Any, path: Path, suffix: str, script: str, monkeypatch: pytest.MonkeyPatch
) -> tuple[Any, float]:
    """Start ``wait`` (a coroutine waiting on ``db``) with the data_version checks held
    still, so that only a wake-up can end it; once it listens on a ``suffix`` socket, run
    ``script`` in another process; return what the wait returned and how long it took."""
    seen = await db.data_version()
    monkeypatch.setattr(connection, "_LISTENING_CHECK", 60.0)

    async def unchanged(self: object) -> int:
        return seen

    monkeypatch.setattr(connection.Connection, "version", unchanged)
    waiting = asyncio.ensure_future(wait)
    wake_dir = Path(f"{path}-wake")
    for _ in range(500):  # until it listens
        if wake_dir.is_dir() and any(p.suffix == suffix for p in wake_dir.iterdir()):
            break
        await asyncio.sleep(0.01)
    assert not waiting.done()
    sent = time.monotonic()
    other = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, f"sqlite:///{path}", cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert await other.wait() == 0
    got = await asyncio.wait_for(waiting, 20.0)
    return got, time.monotonic() - sent


def test_an_idle_fetch_waits_without_taking_again_and_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    takes = _counting_takes(monkeypatch)

    async def body() -> None:
        broker = SqliteBroker(f"sqlite:///{tmp_path / 'idle.db'}")
        await broker.connect()
        try:
            got = await broker.fetch(["q"], 1, 0.5)  # an empty queue: waits its timeout
        finally:
            await broker.close()
        assert list(got) == []

    asyncio.run(body())
    # The first take, and one after the timeout at most (a take that found nothing
    # changed no row: it must not wake its own wait).
    assert len(takes) <= 2, f"{len(takes)} takes in one idle fetch of 0.5 s"


PUBLISH = """
import asyncio, sys
from taskflow.brokers.base import Message
from taskflow.brokers.sqlite import SqliteBroker

async def main():
    broker = SqliteBroker(sys.argv[1])
    await broker.connect()
    await broker.publish([Message("from-another-process", "q", b"x")])
    await broker.close()

asyncio.run(main())
"""


def test_a_publish_in_another_process_wakes_a_waiting_fetch_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "wake.db"

    async def body() -> float:
        broker = SqliteBroker(f"sqlite:///{path}")
        await broker.connect()
        try:
            got, took = await _woken_by_another_process(
                broker._db,  # noqa: SLF001
                broker.fetch(["q"], 1, 30.0),
                path,
                ".mc",
                PUBLISH,
                monkeypatch,
            )
        finally:
            await broker.close()
        assert [d.id for d in got] == ["from-another-process"]
        return took

    # The other process's start-up; without the wake-up: the fetch's 30 s.
    assert asyncio.run(body()) < 10.0


def test_a_socket_left_by_a_killed_process_is_removed_by_the_next_publish(
    tmp_path: Path,
) -> None:
    path = tmp_path / "stale.db"
    wake_dir = Path(f"{path}-wake")
    wake_dir.mkdir()
    stale = wake_dir / "999999-dead.mc"
    left = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    left.bind(str(stale))
    left.close()  # as a SIGKILL leaves it: the file stays, nobody reads

    async def body() -> None:
        broker = SqliteBroker(f"sqlite:///{path}")
        await broker.connect()
        try:
            await broker.publish([Message("m1", "q", b"x")])
        finally:
            await broker.close()

    asyncio.run(body())
    assert not stale.exists()


def test_wake_ups_carry_their_topic_to_the_listening_process(tmp_path: Path) -> None:
    path = str(tmp_path / "topics.db")

    async def body() -> list[set[bytes]]:
        got: list[set[bytes]] = []
        woken = asyncio.Event()
        listener, sender = Waker(path), Waker(path)

        def on_wake(topics: set[bytes]) -> None:
            got.append(topics)
            woken.set()

        try:
            assert listener.listen(FETCHING, on_wake)
            sender.notify(RESULTS)  # not what it listens for: not sent to it
            sender.notify(CONTROL)
            await asyncio.wait_for(woken.wait(), 5.0)
            listener.notify(MESSAGES)  # its own socket is skipped
            await asyncio.sleep(0.05)
        finally:
            listener.close()
            sender.close()
        assert list(Path(f"{path}-wake").iterdir()) == []  # closing removed its socket
        return got

    assert asyncio.run(body()) == [{CONTROL}]


def test_a_control_wake_up_rings_the_control_bell_and_not_the_fetchers(tmp_path: Path) -> None:
    path = str(tmp_path / "control.db")

    async def body() -> None:
        # Two connections on one file in one process stand for two processes.
        waiting, sending = Database(path, 5.0), Database(path, 6.0)
        await waiting.open()
        await sending.open()
        try:
            shared = waiting._shared  # noqa: SLF001
            assert shared is not None and shared.listen(FETCHING)
            control, messages = Doorbell.of(path, "control"), Doorbell.of(path)
            before = (control.rings, messages.rings)
            sending.wake_others(CONTROL)
            for _ in range(500):
                if control.rings != before[0]:
                    break
                await asyncio.sleep(0.01)
            assert (control.rings, messages.rings) == (before[0] + 1, before[1])
        finally:
            await waiting.close()
            await sending.close()

    asyncio.run(body())


def _insert(conn: sqlite3.Connection, key: str) -> None:
    conn.execute("INSERT INTO kv (key, value) VALUES (?, 'x')", (key,))


def test_checkpoints_run_on_their_own_thread_and_stop_with_the_connection(
    tmp_path: Path,
) -> None:
    path = str(tmp_path / "checkpoints.db")

    async def body() -> None:
        db = Database(path, 5.0)
        await db.open()
        shared = db._shared  # noqa: SLF001
        assert shared is not None and shared.checkpointer is not None
        try:
            # The committing connection checkpoints only past the backstop.
            (pages,) = await db.run(lambda c: c.execute("PRAGMA wal_autocheckpoint").fetchone())
            assert pages == checkpoint.BACKSTOP
            for k in range(checkpoint.CHECKPOINT_EVERY * 2):
                db.statement_blocking(_insert, f"k{k}")
            for _ in range(500):
                if shared.checkpointer.runs >= 1:
                    break
                await asyncio.sleep(0.01)
            assert shared.checkpointer.runs >= 1
        finally:
            await db.close()
        names = {t.name for t in threading.enumerate()}
        assert "taskflow-sqlite-checkpoint" not in names

    asyncio.run(body())
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT count(*) FROM kv").fetchone() == (
            checkpoint.CHECKPOINT_EVERY * 2,
        )
    conn.close()


def test_a_short_write_runs_on_the_calling_thread_only_when_the_connection_is_idle(
    tmp_path: Path,
) -> None:
    path = str(tmp_path / "here.db")
    entered, gate = threading.Event(), threading.Event()

    def held(conn: sqlite3.Connection) -> None:
        entered.set()
        gate.wait(10)

    def thread_name(conn: sqlite3.Connection, key: str) -> str:
        _insert(conn, key)
        return threading.current_thread().name

    async def body() -> None:
        db = Database(path, 5.0)
        await db.open()
        shared = db._shared  # noqa: SLF001
        assert shared is not None
        here = threading.current_thread().name
        try:
            # Idle: on this thread, committed.
            assert shared.write_here(thread_name, ("a",)) == (True, here)
            # Another process holds the file's write lock: nothing done, no wait.
            other = sqlite3.connect(path, isolation_level=None)
            other.execute("BEGIN IMMEDIATE")
            try:
                assert shared.write_here(thread_name, ("b",)) == (False, None)
            finally:
                other.execute("ROLLBACK")
                other.close()
            # The connection's thread is busy with a write: left to it, in order.
            first = asyncio.ensure_future(db.write(held))
            assert await asyncio.to_thread(entered.wait, 10)
            assert shared.write_here(thread_name, ("c",)) == (False, None)
            later = asyncio.ensure_future(db.write_soon(thread_name, "d"))
            await asyncio.sleep(0)
            gate.set()
            await first
            assert (await later).startswith("taskflow-sqlite")
            keys = await db.run(lambda c: {r[0] for r in c.execute("SELECT key FROM kv")})
            assert keys == {"a", "d"}
        finally:
            gate.set()
            await db.close()

    asyncio.run(body())


def test_a_socket_whose_loop_ended_is_read_by_the_next_loop_that_waits(tmp_path: Path) -> None:
    path = str(tmp_path / "loops.db")
    listener, sender = Waker(path), Waker(path)

    async def first() -> None:
        assert listener.listen(FETCHING, lambda topics: None)

    async def second() -> set[bytes]:
        got: list[set[bytes]] = []
        woken = asyncio.Event()

        def on_wake(topics: set[bytes]) -> None:
            got.append(topics)
            woken.set()

        assert listener.listen(FETCHING, on_wake)
        sender.notify(MESSAGES)
        await asyncio.wait_for(woken.wait(), 5.0)
        return got[0]

    try:
        asyncio.run(first())  # that loop is closed when it returns
        assert asyncio.run(second()) == {MESSAGES}
    finally:
        listener.close()
        sender.close()


def test_a_file_in_the_wake_up_directory_that_is_no_socket_is_left_alone(
    tmp_path: Path,
) -> None:
    path = tmp_path / "other.db"
    wake_dir = Path(f"{path}-wake")
    wake_dir.mkdir()
    note = wake_dir / "README"
    note.write_text("not a socket")

    async def body() -> None:
        broker = SqliteBroker(f"sqlite:///{path}")
        await broker.connect()
        try:
            await broker.publish([Message("m1", "q", b"x")])
        finally:
            await broker.close()

    asyncio.run(body())
    assert note.read_text() == "not a socket"


FINISH = """
import asyncio, sys
from taskflow.results.sqlite import SqliteResultStore

async def main():
    store = SqliteResultStore(sys.argv[1])
    await store.connect()
    await store.update("t1", {"status": "succeeded", "result": 7}, None)
    await store.close()

asyncio.run(main())
"""


def test_a_record_finished_in_another_process_wakes_a_waiting_result_get_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "results.db"

    async def body() -> float:
        store = SqliteResultStore(f"sqlite:///{path}")
        await store.connect()
        try:
            await store.create_many([("t1", {"status": "queued"})], None)
            record, took = await _woken_by_another_process(
                store._db,  # noqa: SLF001
                store.wait("t1", 30.0),
                path,
                ".r",
                FINISH,
                monkeypatch,
            )
        finally:
            await store.close()
        assert record is not None and record["status"] == "succeeded"
        return took

    # The other process's start-up; without the wake-up: the wait's 30 s.
    assert asyncio.run(body()) < 10.0
