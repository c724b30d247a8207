"""A worker rides out a backend that is away and a message that cannot be decoded.

Every stage survives a failed step (retry with backoff, one log line per outage), a stage
that truly dies stops the worker and says so (``Worker.fatal``, ``run()`` raises), and no
message is left unsettled: undecodable ones are dead-lettered at once, and an outcome is
written however long the result store is away.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from taskflow import App, BrokerError, TaskFailed, TaskStatus, codec
from taskflow.brokers import MemoryBroker, Message
from taskflow.brokers.base import Delivery
from taskflow.brokers.memory import MemoryDelivery
from taskflow.brokers.sqlite import SqliteDelivery
from taskflow.errors import PayloadError, RecordTooLarge, WorkerCrashed
from taskflow.results.memory import MemoryResultStore
from taskflow.testing import running_worker

WAIT = 10.0


class FlakyStore(MemoryResultStore):
    """A result store whose record writes fail while it is down (a restart, a failover)."""

    def __init__(self, failures: int = 0) -> None:
        super().__init__()
        self.failures = failures  # the next this many writes fail
        self.down = threading.Event()
        self.refused = 0
        self.refused_some = threading.Event()

    async def update(
        self, task_id: str, changes: dict[str, Any], ttl: float | None = None
    ) -> dict[str, Any] | None:
        if self.down.is_set() or self.failures > 0:
            self.failures = max(0, self.failures - 1)
            self.refused += 1
            if self.refused >= 3:
                self.refused_some.set()
            raise BrokerError("result store redis://***@db:6379/0 is not reachable")
        return await super().update(task_id, changes, ttl)


@pytest.fixture
def store() -> FlakyStore:
    return FlakyStore()


@pytest.fixture
def flaky_app(store: FlakyStore) -> Iterator[App]:
    application = App("flaky", broker=MemoryBroker(), results=store)
    yield application
    application.close()


def _outage_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.WARNING and "retrying with backoff" in r.getMessage()
    ]


def test_an_unknown_task_met_while_the_store_is_down_does_not_stop_the_fetcher(
    flaky_app: App, store: FlakyStore, caplog: pytest.LogCaptureFixture
) -> None:
    @flaky_app.task
    def good(x: int) -> int:
        return x * 2

    unknown = flaky_app.send_task("nobody.knows.this", args=(1,))
    store.failures = 4  # recording NotRegistered fails four times
    with caplog.at_level(logging.INFO, logger="taskflow.worker"), running_worker(flaky_app):
        assert good.delay(21).get(timeout=WAIT) == 42
        with pytest.raises(TaskFailed) as info:
            unknown.get(timeout=WAIT)
    assert info.value.exc_type == "taskflow.errors.NotRegistered"
    dead = flaky_app.kernel.call(flaky_app.broker.dead_letters("default"))
    assert [(d.id, d.reason) for d in dead] == [(unknown.id, "not_registered")]
    assert len(_outage_lines(caplog)) == 1  # one line for the outage, not one per attempt


def test_a_task_whose_store_is_away_for_a_while_still_succeeds_once_it_is_back(
    flaky_app: App, store: FlakyStore
) -> None:
    ran: list[int] = []

    @flaky_app.task  # retries=0: a lost delivery would have failed it with WorkerLost
    def job() -> str:
        ran.append(1)
        return "done"

    store.down.set()
    result = job.delay()
    with running_worker(flaky_app):
        assert store.refused_some.wait(WAIT)  # the worker keeps trying to mark it running
        store.down.clear()
        assert result.get(timeout=WAIT) == "done"
    assert ran == [1]
    assert result.info().attempts == 1
    assert flaky_app.kernel.call(flaky_app.broker.dead_letters("default")) == []


class OddStore(MemoryResultStore):
    """A result store whose next ``odd`` record writes fail with an error that is not a
    backend being away (a bug, say): tried again a bounded number of times."""

    def __init__(self, odd: int) -> None:
        super().__init__()
        self.odd = odd
        self.writes = 0

    async def update(
        self, task_id: str, changes: dict[str, Any], ttl: float | None = None
    ) -> dict[str, Any] | None:
        self.writes += 1
        if self.odd > 0:
            self.odd -= 1
            raise RuntimeError("unexpected")
        return await super().update(task_id, changes, ttl)


def _unexpected_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "failed unexpectedly" in r.getMessage()]


def test_a_record_write_failing_unexpectedly_is_tried_again_and_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = OddStore(odd=2)  # the running write's first try, then its second
    app = App("odd", broker=MemoryBroker(), results=store)
    try:

        @app.task
        def job() -> str:
            return "done"

        result = job.delay()
        writes_before = store.writes  # the queued record's
        assert app.worker().run_until_idle() == 1
        assert result.get(timeout=WAIT) == "done"
        # Three tries of the running write (two failed), then the outcome's one.
        assert store.writes - writes_before == 4
        [line] = _unexpected_lines(caplog)  # the first one only, with its traceback
        assert f"writing the record of task {result.id}" in line
    finally:
        app.close()


def test_a_record_write_failing_unexpectedly_every_time_is_given_up_after_three_tries(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = OddStore(odd=1_000)
    app = App("odd", broker=MemoryBroker(), results=store)
    ran: list[int] = []
    try:

        @app.task
        def job() -> str:
            ran.append(1)
            return "done"

        result = job.delay()
        writes_before = store.writes
        app.worker().run_until_idle()
        assert store.writes - writes_before == 3  # the running write: its try, two more
        assert ran == []  # not run without its running record
        assert len(_unexpected_lines(caplog)) == 1
        [given_up] = [r for r in caplog.records if "internal error settling" in r.getMessage()]
        assert given_up.levelno == logging.ERROR and result.id in given_up.getMessage()
    finally:
        app.close()


def test_an_ack_failing_while_the_broker_is_away_is_retried_and_logged_by_its_name(
    flaky_app: App, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    @flaky_app.task
    def job() -> str:
        return "done"

    acks: list[str] = []
    real_ack = MemoryDelivery.ack

    async def ack(self: MemoryDelivery) -> bool:
        acks.append(self.id)
        if len(acks) == 1:
            raise BrokerError("broker redis://***@mq:6379/0 is not reachable")
        return await real_ack(self)

    monkeypatch.setattr(MemoryDelivery, "ack", ack)
    result = job.delay()
    with caplog.at_level(logging.INFO, logger="taskflow.worker"):
        assert flaky_app.worker().run_until_idle() == 1
    assert result.get(timeout=WAIT) == "done"
    assert acks == [result.id, result.id]  # tried again after the failure
    # The outage's one line says what was being done, in words ("acking", not "Act.ACK").
    [line] = _outage_lines(caplog)
    assert f": acking of task {result.id} failed" in line


def test_an_outcome_written_with_its_ack_is_retried_and_logged_by_both_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """On SQLite the record and the ack go in one call: its outage says both."""
    app = App("linked", broker=f"sqlite:///{tmp_path}/q.db")

    @app.task
    def job() -> str:
        return "done"

    tries: list[str] = []
    real = SqliteDelivery.ack_recording

    async def ack_recording(self: SqliteDelivery, *args: Any) -> tuple[bool, bool]:
        tries.append(self.id)
        if len(tries) == 1:
            raise BrokerError("database is locked")
        return await real(self, *args)

    monkeypatch.setattr(SqliteDelivery, "ack_recording", ack_recording)
    try:
        result = job.delay()
        with caplog.at_level(logging.INFO, logger="taskflow.worker"):
            assert app.worker().run_until_idle() == 1
        assert result.get(timeout=WAIT) == "done"
        assert tries == [result.id, result.id]  # the one call, tried again
        [line] = _outage_lines(caplog)
        assert f": writing the record and acking of task {result.id} failed" in line
    finally:
        app.close()


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b'{"v": 1, "id": "m1", "task": "t", "queue": "default", "canvas": 7}', "canvas"),
        (b'{"v": 1, "id": "m1", "task": "t", "queue": "default", "attempt": 0}', "attempt"),
        (b'{"v": 1, "id": "m1", "task": "t", "queue": "default", "headers": {"a": 1}}', "hdr"),
        (b"\xff\xfe not json", "json"),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_an_undecodable_message_is_dead_lettered_at_once_and_good_ones_still_run(
    app: App, body: bytes, why: str, caplog: pytest.LogCaptureFixture
) -> None:
    @app.task(name="t")
    def t() -> str:
        return "ran"

    app.kernel.call(app.kernel.connect())
    app.kernel.call(app.broker.publish([Message("m1", "default", body)]))
    good = t.delay()
    with caplog.at_level(logging.INFO, logger="taskflow.worker"), running_worker(app):
        assert good.get(timeout=WAIT) == "ran"
    dead = app.kernel.call(app.broker.dead_letters("default"))
    assert [(d.id, d.reason) for d in dead] == [("m1", "undecodable")]
    assert app.result("m1").status is TaskStatus.FAILED
    lines = [r for r in caplog.records if "m1" in r.getMessage()]
    assert len(lines) == 1 and lines[0].levelno == logging.WARNING
    assert lines[0].exc_info is None


@pytest.mark.parametrize(
    "error",
    [RecursionError("maximum recursion depth exceeded"), ValueError("bad text 'SECRET-9'")],
)
def test_any_error_decoding_the_arguments_fails_the_task_as_payload_without_its_values(
    app: App, error: Exception, monkeypatch: pytest.MonkeyPatch
) -> None:
    ran: list[int] = []

    @app.task
    def job(x: str) -> None:
        ran.append(1)

    def broken(args: Sequence[Any], kwargs: dict[str, Any]) -> Any:
        raise error

    monkeypatch.setattr(job.schema, "decode_args", broken)
    result = job.delay("SECRET-9")
    with running_worker(app):
        with pytest.raises(TaskFailed) as info:
            result.get(timeout=WAIT)
    assert ran == []
    assert info.value.exc_type == "taskflow.errors.PayloadError"
    assert type(error).__name__ in info.value.message
    assert "SECRET" not in info.value.message
    dead = app.kernel.call(app.broker.dead_letters("default"))
    assert [(d.id, d.reason) for d in dead] == [(result.id, "payload")]
    assert "SECRET" not in str(dead[0].error)


def test_a_retry_that_cannot_be_encoded_fails_the_task_instead_of_leaving_it(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    @app.task(retries=2, retry_backoff=0.0)
    def job() -> None:
        raise ConnectionError("down")

    encode = codec.encode_envelope

    def unencodable(env: Any) -> bytes:
        if env.attempt > 1:  # e.g. an attempt past 64 bits, or headers that do not survive
            raise PayloadError("job: envelope is not JSON-serializable: Integer exceeds 64-bit")
        return encode(env)

    monkeypatch.setattr(codec, "encode_envelope", unencodable)
    result = job.delay()
    with running_worker(app):
        with pytest.raises(TaskFailed) as info:
            result.get(timeout=WAIT)
    assert info.value.exc_type == "ConnectionError"
    dead = app.kernel.call(app.broker.dead_letters("default"))
    assert [(d.id, d.reason) for d in dead] == [(result.id, "failed")]


class SmallStore(MemoryResultStore):
    """A result store that cannot hold a result over 100 characters (as a NATS server
    refuses a value over its ``max_payload``)."""

    async def update(
        self, task_id: str, changes: dict[str, Any], ttl: float | None = None
    ) -> dict[str, Any] | None:
        if len(str(changes.get("result", ""))) > 100:
            raise RecordTooLarge(f"the record of task {task_id} is too large for this store")
        return await super().update(task_id, changes, ttl)


def test_a_result_the_store_cannot_hold_fails_the_task_without_a_retried_write(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="taskflow.worker")
    with App("small", broker=MemoryBroker(), results=SmallStore()) as small:

        @small.task(name="small.text", retries=2)
        def text(size: int) -> str:
            return "t" * size

        large, fits = text.delay(1000), text.delay(10)
        small.worker().run_until_idle()

        with pytest.raises(TaskFailed) as info:
            large.get(timeout=WAIT)
        assert info.value.exc_type == "taskflow.errors.RecordTooLarge"
        assert large.info().attempts == 1
        assert fits.get(timeout=WAIT) == "t" * 10
        dead = small.kernel.call(small.broker.dead_letters("default"))
        assert [(d.id, d.reason) for d in dead] == [(large.id, "payload")]
    lines = [r.getMessage() for r in caplog.records]
    assert f"small.text[{large.id}]: result not stored (too_large)" in lines
    assert not [line for line in lines if "retrying" in line]  # refused once, not retried


class BrokenFetch(MemoryBroker):
    """A broker whose fetch fails: ``transient`` times with BrokerError, or always with a
    bug (an error that is not a backend being down)."""

    def __init__(self, transient: int = 0, bug: bool = False) -> None:
        super().__init__()
        self.transient = transient
        self.bug = bug

    async def fetch(
        self, queues: Sequence[str], max_messages: int, timeout: float
    ) -> list[Delivery]:
        if self.bug:
            raise RuntimeError("bug in the broker client")
        if self.transient > 0:
            self.transient -= 1
            raise BrokerError("broker redis://***@mq:6379/0 is not reachable")
        return await super().fetch(queues, max_messages, timeout)


def test_a_fetch_stage_that_dies_stops_the_worker_and_run_raises_worker_crashed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with App("dies", broker=BrokenFetch(bug=True)) as app:
        worker = app.worker(concurrency=1)
        raised: list[BaseException] = []

        def run() -> None:
            try:
                worker.run()  # returns once the stage died, instead of blocking forever
            except BaseException as exc:
                raised.append(exc)

        runner = threading.Thread(target=run)
        with caplog.at_level(logging.WARNING, logger="taskflow.worker"):
            runner.start()
            runner.join(WAIT)
        if runner.is_alive():
            worker.stop_now()
            runner.join()
            pytest.fail("the worker kept running with a dead fetch stage")
        assert isinstance(worker.fatal, RuntimeError)
        assert len(raised) == 1 and isinstance(raised[0], WorkerCrashed)
        assert raised[0].__cause__ is worker.fatal
        assert "fetch stage died" in caplog.text
        assert worker.stats()["state"] == "stopped"


def test_a_broker_that_is_away_for_a_while_does_not_kill_the_fetch_stage(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with App("away", broker=BrokenFetch(transient=6)) as app:

        @app.task
        def job() -> str:
            return "ok"

        with caplog.at_level(logging.INFO, logger="taskflow.worker"):
            with app.worker(concurrency=1) as worker:
                assert job.delay().get(timeout=WAIT) == "ok"
        assert worker.fatal is None
        assert len(_outage_lines(caplog)) == 1
        assert "fetch succeeded after 6 failed attempts" in caplog.text


class FullBroker(MemoryBroker):
    """A broker that refuses the write a queue it has never seen needs while it is full
    (Redis at its ``maxmemory``, a full disk)."""

    def __init__(self) -> None:
        super().__init__()
        self.full = threading.Event()
        self.full.set()
        self.refusals = 0
        self.refused_twice = threading.Event()  # as the worker started, and once more after
        self.declared = threading.Event()

    async def declare(self, queue: str, *, max_length: int | None = None) -> None:
        if self.full.is_set():
            self.refusals += 1
            if self.refusals >= 2:
                self.refused_twice.set()
            raise BrokerError("command not allowed when used memory > 'maxmemory'")
        await super().declare(queue, max_length=max_length)
        self.declared.set()


def _double(x: int) -> int:
    return 2 * x


@pytest.fixture
def full_broker() -> FullBroker:
    return FullBroker()


@pytest.fixture
def full_app(full_broker: FullBroker) -> Iterator[App]:
    """An app on :class:`FullBroker` with one task, ``full.double``."""
    application = App("full", broker=full_broker)
    application.task(name="full.double")(_double)
    yield application
    application.close()


def test_a_worker_started_on_a_full_broker_waits_to_declare_its_queue_then_serves(
    full_app: App, full_broker: FullBroker, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="taskflow.worker"), running_worker(full_app):
        # Started, not crashed: the refusal is logged and the worker waits for room.
        assert full_broker.refused_twice.wait(WAIT)
        assert not full_broker.declared.is_set()
        full_broker.full.clear()
        # Nothing was sent yet: the worker declares its queue itself once it can.
        assert full_broker.declared.wait(WAIT), "the worker never declared its queue"
        assert full_app.send_task("full.double", args=(21,)).get(timeout=WAIT) == 42
    messages = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    assert any("cannot declare queue 'default' yet" in m and "maxmemory" in m for m in messages)
    assert [m for m in messages if "declaring its queues failed" in m] != []
    assert [m for m in messages if "declaring its queues succeeded after" in m] != []


def test_run_until_idle_on_a_full_broker_raises_rather_than_waiting(full_app: App) -> None:
    # The test seam returns: it does not wait for the broker to take the queue.
    with pytest.raises(BrokerError, match="maxmemory"):
        full_app.worker().run_until_idle()
