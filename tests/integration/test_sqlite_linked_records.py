"""An SQLite broker and result store on one file: the broker writes a task's record in the
transaction that publishes or settles its message, so the two commit together or not at
all (``Broker.link_records``)."""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from taskflow import App, TaskContext
from taskflow.brokers import _sqlite_ops as ops
from taskflow.brokers.base import Message, RecordClose
from taskflow.brokers.sqlite import SqliteBroker, SqliteDelivery
from taskflow.clock import FakeClock
from taskflow.errors import BrokerError, QueueFull
from taskflow.results.base import TaskStatus
from taskflow.results.sqlite import SqliteResultStore

QUEUE = "linked"
QUEUED = {"status": TaskStatus.QUEUED.value, "name": "t", "queue": QUEUE}
SUCCEEDED = {"status": TaskStatus.SUCCEEDED.value, "result": 42}


class Failing(sqlite3.OperationalError):
    """The failure injected inside a transaction (raised as a BrokerError naming the
    file)."""


def failing_write(*args: Any) -> Any:
    """A record write of the store's that fails inside the broker's transaction."""
    raise Failing("disk I/O error")


@dataclasses.dataclass
class Pair:
    broker: SqliteBroker
    store: SqliteResultStore


@asynccontextmanager
async def linked(path: Path, clock: FakeClock | None = None) -> AsyncIterator[Pair]:
    url = f"sqlite:///{path}"
    broker = SqliteBroker(url, lease=30.0, clock=clock)
    store = SqliteResultStore(url, clock=clock)
    assert broker.link_records(store.record_location())
    await broker.connect()
    await store.connect()
    try:
        yield Pair(broker, store)
    finally:
        await broker.close()
        await store.close()


def run(body: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(body())


def message(tid: str, queue: str = QUEUE) -> Message:
    return Message(id=tid, queue=queue, body=b"body", priority=0, max_deliveries=3)


async def published(pair: Pair, count: int = 1) -> list[str]:
    ids = [uuid.uuid4().hex for _ in range(count)]
    await pair.broker.publish_recording(
        [message(tid) for tid in ids], [(tid, QUEUED) for tid in ids]
    )
    return ids


async def leased(pair: Pair) -> SqliteDelivery:
    got = await pair.broker.fetch([QUEUE], 1, 1.0)
    assert len(got) == 1
    delivery = got[0]
    assert isinstance(delivery, SqliteDelivery) and delivery.records_linked
    return delivery


async def status(pair: Pair, tid: str) -> str | None:
    record = await pair.store.get(tid)
    return None if record is None else str(record["status"])


def failing_settle(monkeypatch: pytest.MonkeyPatch, action: str) -> None:
    """``action`` fails inside its transaction (after the record's write in it)."""
    settle = ops.settle

    def broken(
        conn: sqlite3.Connection, fence: Any, act: str, now: float, extra: dict[str, Any]
    ) -> bool:
        if act == action:
            raise Failing(f"disk I/O error during {act}")
        return settle(conn, fence, act, now, extra)

    monkeypatch.setattr(ops, "settle", broken)


# -- linking ---------------------------------------------------------------------------


def test_an_app_links_its_records_when_broker_and_results_share_the_file(
    tmp_path: Path,
) -> None:
    one = f"sqlite:///{tmp_path / 'one.db'}"
    with App("one-file", broker=one) as app:
        assert app.kernel.backends.records_linked
    with App("two-files", broker=one, results=f"sqlite:///{tmp_path / 'two.db'}") as app:
        assert not app.kernel.backends.records_linked


def test_a_send_refused_by_a_locked_file_wrote_nothing_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The records go in the messages' own transaction: a send the lock refused left no
    # record, so there is nothing to undo (an undo, blocked by the same lock, used to log
    # that the record of a task never sent "stays").
    path = tmp_path / "locked.db"
    with App("locked", broker=f"sqlite:///{path}?busy_timeout=0.2") as app:

        @app.task(queue=QUEUE)
        def job() -> None: ...

        job.apply_async(task_id="sent")
        holder = sqlite3.connect(path, isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")
        try:
            with caplog.at_level("WARNING", logger="taskflow"), pytest.raises(BrokerError):
                job.delay()
        finally:
            holder.execute("COMMIT")
            holder.close()
        assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == []
        records = sqlite3.connect(path).execute("SELECT count(*) FROM records").fetchone()
        assert records == (1,)
        assert app.get_task("sent").status is TaskStatus.QUEUED
        assert app.kernel.call(app.broker.depth(QUEUE))["ready"] == 1


def test_a_task_run_by_a_linked_worker_stores_its_result_and_leaves_no_message(
    tmp_path: Path,
) -> None:
    with App("linked-worker", broker=f"sqlite:///{tmp_path / 'w.db'}") as app:

        @app.task(queue=QUEUE, retries=1, retry_backoff=0.0, bind=True)
        def flaky(ctx: TaskContext, fail: bool) -> int:
            if fail and ctx.attempt == 1:
                raise RuntimeError("first attempt fails")
            return 7

        results = [flaky.delay(False), flaky.delay(True)]
        with app.worker([QUEUE], concurrency=2):
            assert [r.get(timeout=30) for r in results] == [7, 7]
        assert [r.info().attempts for r in results] == [1, 2]
        broker = app.broker
        assert isinstance(broker, SqliteBroker)
        depth = app.kernel.call(broker.depth(QUEUE))
        assert (depth["ready"], depth["inflight"], depth["dead"]) == (0, 0, 0)


def test_an_idle_linked_worker_starts_a_stored_task_on_the_record_its_fetch_marked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    writes: list[tuple[str, str]] = []  # (task id, who wrote): the worker's record writes
    write_record = SqliteDelivery.write_record

    async def delivery_write(self: SqliteDelivery, task_id: str, changes: Any, ttl: Any) -> Any:
        writes.append((task_id, "delivery"))
        return await write_record(self, task_id, changes, ttl)

    monkeypatch.setattr(SqliteDelivery, "write_record", delivery_write)
    with App("marks", broker=f"sqlite:///{tmp_path / 'marks.db'}") as app:
        update = app.results.update

        async def store_write(task_id: str, changes: Any, ttl: float | None) -> Any:
            writes.append((task_id, "store"))
            return await update(task_id, changes, ttl)

        monkeypatch.setattr(app.results, "update", store_write)
        seen: dict[str, Any] = {}

        @app.task(queue=QUEUE, bind=True)
        def look(ctx: TaskContext, n: int) -> int:
            record = app.kernel.call(app.results.get(ctx.id))
            seen["status"] = None if record is None else record["status"]
            seen["writes before the body"] = [w for w in writes if w[0] == ctx.id]
            return n * 2

        with app.worker([QUEUE], concurrency=4):
            handle = look.delay(21)
            assert handle.get(timeout=30) == 42
        # The fetch marked the record running: the worker wrote nothing before the body,
        # and the outcome went with the ack (ack_recording), not as a write of its own.
        assert seen == {"status": "running", "writes before the body": []}
        assert [w for w in writes if w[0] == handle.id] == []
        info = handle.info()
        assert (info.status.value, info.attempts) == ("succeeded", 1)
        assert info.worker and info.started_at is not None


# -- publishing --------------------------------------------------------------------------


def test_a_publish_creates_the_queued_records_with_its_messages(tmp_path: Path) -> None:
    async def body() -> None:
        async with linked(tmp_path / "p.db") as pair:
            ids = await published(pair, 3)
            assert [await status(pair, tid) for tid in ids] == ["queued"] * 3
            existing = ids[0]  # a record that exists is left as it is
            await pair.broker.publish_recording(
                [message(existing)], [(existing, {**QUEUED, "name": "other"})]
            )
            record = await pair.store.get(existing)
            assert record is not None and record["name"] == "t"

    run(body)


def test_a_publish_refused_by_a_full_queue_creates_no_record(tmp_path: Path) -> None:
    async def body() -> None:
        async with linked(tmp_path / "full.db") as pair:
            await pair.broker.declare("bounded", max_length=1)
            first, second = uuid.uuid4().hex, uuid.uuid4().hex
            await pair.broker.publish_recording([message(first, "bounded")], [(first, QUEUED)])
            with pytest.raises(QueueFull):
                await pair.broker.publish_recording(
                    [message(second, "bounded")], [(second, QUEUED)]
                )
            assert await pair.store.get(second) is None

    run(body)


def test_a_publish_whose_records_fail_stores_no_message(tmp_path: Path) -> None:
    async def body() -> None:
        async with linked(tmp_path / "nomsg.db") as pair:
            records = pair.store.record_location()
            pair.broker.link_records(dataclasses.replace(records, create=failing_write))
            tid = uuid.uuid4().hex
            with pytest.raises(BrokerError, match="disk I/O error"):
                await pair.broker.publish_recording([message(tid)], [(tid, QUEUED)])
            assert await pair.broker.fetch([QUEUE], 10, 0) == []

    run(body)


def test_a_blocking_publish_creates_its_record_on_the_calling_thread(tmp_path: Path) -> None:
    with App("blocking", broker=f"sqlite:///{tmp_path / 'b.db'}") as app:

        @app.task(queue=QUEUE)
        def noop() -> None:
            return None

        result = noop.delay()
        assert result.status is TaskStatus.QUEUED
        broker = app.broker
        assert isinstance(broker, SqliteBroker)
        assert app.kernel.call(broker.depth(QUEUE))["ready"] == 1


# -- fetching ----------------------------------------------------------------------------


def test_a_fetch_taking_no_more_than_it_starts_marks_their_records_running(
    tmp_path: Path,
) -> None:
    async def body() -> None:
        async with linked(tmp_path / "mark.db") as pair:
            first, second, cancelled = await published(pair, 3)
            await pair.store.update(cancelled, {"status": TaskStatus.CANCELLED.value}, 60.0)
            fire_and_forget = uuid.uuid4().hex
            await pair.broker.publish([message(fire_and_forget)])
            got = await pair.broker.fetch_starting([QUEUE], 4, 1.0, 4)
            marked = {d.id: d.running_recorded for d in got}
            assert marked == {
                first: True,
                second: True,
                cancelled: False,  # final: the worker finds it so and does not run it
                fire_and_forget: False,  # no record to mark
            }
            for tid in (first, second):
                record = await pair.store.get(tid)
                assert record is not None and record["status"] == "running"
                assert isinstance(record["started_at"], float)
            assert await status(pair, cancelled) == "cancelled"
            assert await pair.store.get(fire_and_forget) is None

    run(body)


def test_a_fetch_taking_more_than_it_starts_marks_nothing(tmp_path: Path) -> None:
    async def body() -> None:
        async with linked(tmp_path / "nomark.db") as pair:
            ids = await published(pair, 3)
            got = await pair.broker.fetch_starting([QUEUE], 3, 1.0, 2)
            assert [d.running_recorded for d in got] == [False] * 3
            assert [await status(pair, tid) for tid in ids] == ["queued"] * 3

    run(body)


def test_a_marked_task_handed_back_unstarted_is_queued_again(tmp_path: Path) -> None:
    async def body() -> None:
        async with linked(tmp_path / "back.db") as pair:
            (tid,) = await published(pair)
            (delivery,) = await pair.broker.fetch_starting([QUEUE], 1, 1.0, 1)
            assert delivery.running_recorded and await status(pair, tid) == "running"
            assert await delivery.nack(requeue=True)
            assert await status(pair, tid) == "queued"
            again = await leased(pair)  # uncounted: the same delivery count
            assert (again.id, again.delivery_count, again.running_recorded) == (tid, 1, False)
            # A stale hand-back (its lease lost) changes neither message nor record.
            assert not await delivery.nack(requeue=True)
            assert await status(pair, tid) == "queued"

    run(body)


# -- settling ----------------------------------------------------------------------------


def test_an_outcome_and_its_ack_commit_together(tmp_path: Path) -> None:
    async def body() -> None:
        async with linked(tmp_path / "ack.db") as pair:
            (tid,) = await published(pair)
            delivery = await leased(pair)
            assert await delivery.ack_recording(tid, SUCCEEDED, 60.0) == (True, True)
            assert await status(pair, tid) == "succeeded"
            assert await pair.broker.fetch([QUEUE], 1, 0) == []
            # A second outcome for a terminal record is not written; the ack still holds
            # or not on its own (here the message is gone).
            assert await delivery.ack_recording(tid, {"status": "failed"}, 60.0) == (
                False,
                False,
            )
            assert await status(pair, tid) == "succeeded"

    run(body)


def test_an_ack_that_fails_leaves_no_outcome_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def body() -> None:
        async with linked(tmp_path / "ackfail.db") as pair:
            (tid,) = await published(pair)
            delivery = await leased(pair)
            failing_settle(monkeypatch, "ack")
            with pytest.raises(BrokerError, match="disk I/O error"):
                await delivery.ack_recording(tid, SUCCEEDED, 60.0)
            # Neither happened: the record does not claim an outcome for a message that
            # is still there to be run again.
            assert await status(pair, tid) == "queued"
            monkeypatch.undo()
            assert await delivery.ack() is True

    run(body)


def test_a_failure_and_its_dead_letter_commit_together(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    failed = {"status": TaskStatus.FAILED.value, "error": {"type": "E", "message": "m"}}

    async def body() -> None:
        async with linked(tmp_path / "dead.db") as pair:
            first, second = await published(pair, 2)
            one = await leased(pair)
            assert await one.dead_letter_recording(first, failed, 60.0, "failed", "E") == (
                True,
                True,
            )
            assert await status(pair, first) == "failed"
            assert [d.id for d in await pair.broker.dead_letters(QUEUE)] == [first]

            two = await leased(pair)
            failing_settle(monkeypatch, "dead")
            with pytest.raises(BrokerError, match="disk I/O error"):
                await two.dead_letter_recording(second, failed, 60.0, "failed", "E")
            assert await status(pair, second) == "queued"
            assert [d.id for d in await pair.broker.dead_letters(QUEUE)] == [first]

    run(body)


def test_a_retry_is_made_only_if_its_record_was_written(tmp_path: Path) -> None:
    retrying = {"status": TaskStatus.RETRYING.value, "attempts": 1}

    async def body() -> None:
        async with linked(tmp_path / "retry.db") as pair:
            first, second = await published(pair, 2)
            one, two = await pair.broker.fetch([QUEUE], 2, 1.0)
            assert (one.id, two.id) == (first, second)
            assert await one.retry_recording(first, retrying, b"again", 0.0) == (True, True)
            assert await status(pair, first) == "retrying"

            # Cancelled while it ran: the record is terminal, and the task must not come
            # back.
            await pair.store.update(second, {"status": TaskStatus.CANCELLED.value}, 60.0)
            assert await two.retry_recording(second, retrying, b"again", 0.0) == (False, False)
            assert await status(pair, second) == "cancelled"
            again = await leased(pair)
            assert (again.id, again.body) == (first, b"again")
            assert await pair.broker.fetch([QUEUE], 1, 0) == []  # the second stays leased
            assert await two.ack()

    run(body)


def test_a_record_written_alone_keeps_a_terminal_record(tmp_path: Path) -> None:
    async def body() -> None:
        async with linked(tmp_path / "alone.db") as pair:
            (tid,) = await published(pair)
            delivery = await leased(pair)
            assert await delivery.write_record(tid, {"status": "running"}, None)
            assert await status(pair, tid) == "running"
            await pair.store.update(tid, {"status": TaskStatus.CANCELLED.value}, 60.0)
            assert not await delivery.write_record(tid, {"status": "running"}, None)
            assert await status(pair, tid) == "cancelled"

    run(body)


def test_expired_records_are_swept_when_only_the_broker_writes(tmp_path: Path) -> None:
    clock = FakeClock()

    async def body() -> None:
        async with linked(tmp_path / "sweep.db", clock) as pair:
            first, second = await published(pair, 2)
            one = await leased(pair)
            assert await one.ack_recording(first, SUCCEEDED, 10.0) == (True, True)
            clock.advance(120.0)  # past the record's life and the store's sweep interval
            two = await leased(pair)
            assert await two.ack_recording(second, SUCCEEDED, 10.0) == (True, True)

        with sqlite3.connect(tmp_path / "sweep.db") as conn:
            kept = [row[0] for row in conn.execute("SELECT id FROM records")]
        conn.close()
        assert kept == [second]

    run(body)


# -- purging -----------------------------------------------------------------------------


async def _close_through_store(ids: Sequence[str]) -> None:
    raise AssertionError("a linked purge closes the records in its own transaction")


def _closing() -> RecordClose:
    changes: Mapping[str, Any] = {"status": TaskStatus.CANCELLED.value, "reason": "purged"}
    return RecordClose(changes, 60.0, _close_through_store)


def test_a_purge_drops_messages_and_closes_their_records_in_batches(tmp_path: Path) -> None:
    async def body() -> None:
        async with linked(tmp_path / "purge.db") as pair:
            ids = await published(pair, 5)
            fire_and_forget = uuid.uuid4().hex
            await pair.broker.publish([message(fire_and_forget)])
            done = ids[-1]
            await pair.store.update(done, SUCCEEDED, 60.0)  # finished meanwhile
            closing = _closing()
            batches = []
            while True:
                batch = await pair.broker.purge_batch_closing(
                    QUEUE, scheduled=True, limit=4, closing=closing
                )
                batches.append(batch)
                if len(batch) < 4:
                    break
            assert batches == [ids[:4], [ids[4], fire_and_forget]]
            assert [await status(pair, tid) for tid in ids[:4]] == ["cancelled"] * 4
            assert await status(pair, done) == "succeeded"
            assert await pair.store.get(fire_and_forget) is None
            assert await pair.broker.fetch([QUEUE], 10, 0) == []

    run(body)


def test_a_purge_whose_records_fail_drops_nothing(tmp_path: Path) -> None:
    async def body() -> None:
        async with linked(tmp_path / "purgefail.db") as pair:
            ids = await published(pair, 3)
            records = pair.store.record_location()
            pair.broker.link_records(dataclasses.replace(records, close=failing_write))
            with pytest.raises(BrokerError, match="disk I/O error"):
                await pair.broker.purge_batch_closing(
                    QUEUE, scheduled=True, limit=100, closing=_closing()
                )
            # Nothing dropped, nothing closed: the purge can be made again.
            assert [await status(pair, tid) for tid in ids] == ["queued"] * 3
            assert (await pair.broker.depth(QUEUE))["ready"] == 3

    run(body)
