"""At least once with leases: a delivery lost with its worker is delivered again without
spending a retry, up to the app's ``max_deliveries``; then (or at once for a task declared
``on_lost="fail"``) the task fails with WorkerLost and is never left 'running'."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest

from taskflow import App, ConfigError, FakeClock, TaskContext, TaskFailed, TaskStatus
from taskflow.brokers import MemoryBroker
from taskflow.results.memory import MemoryResultStore

LEASE = 10.0


@pytest.fixture
def broker(clock: FakeClock) -> MemoryBroker:
    return MemoryBroker(lease=LEASE, clock=clock)


@pytest.fixture
def lost_app(broker: MemoryBroker, clock: FakeClock) -> Iterator[App]:
    application = App("lost", broker=broker, clock=clock)
    yield application
    application.close()


def _lease_and_die(app: App, task_id: str) -> None:
    """Take the message like a worker would, then vanish without settling it."""

    async def take() -> None:
        got = await app.broker.fetch(["default"], 1, 0)
        assert [d.id for d in got] == [task_id]

    app.kernel.call(take())
    app.kernel.call(
        app.results.update(task_id, {"status": "running", "attempts": 1, "worker": "dead"}, None)
    )


def _dead_reasons(app: App) -> list[str]:
    return [d.reason for d in app.kernel.call(app.broker.dead_letters("default"))]


def test_a_task_without_retries_whose_worker_died_runs_again_as_the_same_attempt(
    lost_app: App, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[tuple[int, int]] = []

    @lost_app.task(bind=True)
    def job(ctx: TaskContext) -> int:
        seen.append((ctx.attempt, ctx.delivery))
        return 1

    result = job.delay()
    _lease_and_die(lost_app, result.id)
    assert result.status is TaskStatus.RUNNING

    clock.advance(LEASE + 1)
    with caplog.at_level(logging.WARNING, logger="taskflow.worker"):
        assert lost_app.worker(concurrency=1).run_until_idle() == 1

    assert result.get(timeout=1) == 1
    assert seen == [(1, 2)]  # the retries are not spent; the delivery is counted
    # Its worker may be alive, its renewals refused (a full Redis server): the line says so.
    assert [r.getMessage() for r in caplog.records] == [
        f"{job.name}[{result.id}] delivered again (delivery 2 of attempt 1): its lease ran "
        "out (the worker that held it was lost, or could not renew it)"
    ]
    assert result.info().attempts == 1
    assert _dead_reasons(lost_app) == []


def test_a_task_lost_on_every_allowed_delivery_fails_with_worker_lost(
    broker: MemoryBroker, clock: FakeClock
) -> None:
    with App("lost", broker=broker, clock=clock, max_deliveries=2) as app:
        ran: list[int] = []

        @app.task(retries=3)
        def job() -> int:
            ran.append(1)
            return 1

        result = job.delay()
        for _ in range(2):
            _lease_and_die(app, result.id)
            clock.advance(LEASE + 1)
        app.worker(concurrency=1).run_until_idle()

        assert ran == []  # dead-lettered, not retried: losing workers is not a failure
        with pytest.raises(TaskFailed) as info:
            result.get(timeout=1)
        assert info.value.exc_type == "taskflow.errors.WorkerLost"
        assert "2 deliveries" in info.value.message
        assert _dead_reasons(app) == ["worker_lost"]


def test_a_task_declared_on_lost_fail_is_dead_lettered_at_the_first_loss(
    lost_app: App, clock: FakeClock
) -> None:
    ran: list[int] = []

    @lost_app.task(on_lost="fail")
    def charge() -> int:
        ran.append(1)
        return 1

    result = charge.delay()
    _lease_and_die(lost_app, result.id)
    clock.advance(LEASE + 1)
    lost_app.worker(concurrency=1).run_until_idle()

    assert ran == []
    assert result.status is TaskStatus.FAILED
    with pytest.raises(TaskFailed) as info:
        result.get(timeout=1)
    assert info.value.exc_type == "taskflow.errors.WorkerLost"
    assert _dead_reasons(lost_app) == ["worker_lost"]


def test_on_lost_fail_holds_even_when_the_producer_does_not_know_the_task(
    broker: MemoryBroker, clock: FakeClock
) -> None:
    store = MemoryResultStore(clock=clock)
    with (
        App("consumer", broker=broker, results=store, clock=clock) as consumer,
        App("producer", broker=broker, results=store, clock=clock) as producer,
    ):
        ran: list[int] = []

        @consumer.task(name="shop.charge", on_lost="fail")
        def charge() -> int:
            ran.append(1)
            return 1

        result = producer.send_task("shop.charge")  # sent with the default budget of 5
        _lease_and_die(producer, result.id)
        clock.advance(LEASE + 1)
        consumer.worker(concurrency=1).run_until_idle()

        assert ran == []
        assert result.status is TaskStatus.FAILED
        assert result.info().error is not None
        assert result.info().error["type"] == "taskflow.errors.WorkerLost"
        assert _dead_reasons(consumer) == ["worker_lost"]


def test_a_retry_gets_a_fresh_budget_of_deliveries(broker: MemoryBroker, clock: FakeClock) -> None:
    with App("lost", broker=broker, clock=clock, max_deliveries=3) as app:
        seen: list[tuple[int, int]] = []

        @app.task(bind=True, retries=1, retry_backoff=1.0, retry_jitter=False)
        def flaky(ctx: TaskContext) -> str:
            seen.append((ctx.attempt, ctx.delivery))
            if ctx.attempt == 1:
                raise ConnectionError("first attempt fails")
            return "done"

        result = flaky.delay()
        app.worker(concurrency=1).run_until_idle()
        clock.advance(1.0)
        for _ in range(2):  # the retry loses two workers: within its own budget of 3
            _lease_and_die(app, result.id)
            clock.advance(LEASE + 1)
        app.worker(concurrency=1).run_until_idle()

        assert result.get(timeout=1) == "done"
        assert seen == [(1, 1), (2, 3)]
        assert result.info().attempts == 2


def test_on_lost_and_max_deliveries_are_validated(app: App) -> None:
    with pytest.raises(ValueError, match=r"shop\.job: on_lost must be 'redeliver' or 'fail'"):

        @app.task(name="shop.job", on_lost="sometimes")
        def job() -> None: ...

    with pytest.raises(ConfigError, match=r"App\('x'\): max_deliveries must be an integer >= 1"):
        App("x", max_deliveries=0)


def _recorded_by_a_lost_worker(app: App, clock: FakeClock, outcome: dict[str, Any]) -> Any:
    """A task whose worker wrote ``outcome`` to its record and died before settling the
    message; its lease has run out. Returns the handle and the runs of its body since."""
    ran: list[int] = []

    @app.task
    def job() -> int:
        ran.append(1)
        return 1

    result = job.delay()
    _lease_and_die(app, result.id)
    app.kernel.call(app.results.update(result.id, outcome, 60.0))
    clock.advance(LEASE + 1)
    return result, ran


def test_a_failure_recorded_by_a_worker_that_died_before_dead_lettering_is_dead_lettered(
    lost_app: App, clock: FakeClock
) -> None:
    failure = {"status": "failed", "error": {"type": "ValueError", "message": "bad input"}}
    result, ran = _recorded_by_a_lost_worker(lost_app, clock, failure)
    lost_app.worker(concurrency=1).run_until_idle()

    assert ran == []  # not run again
    (letter,) = lost_app.kernel.call(lost_app.broker.dead_letters("default"))
    assert (letter.id, letter.reason) == (result.id, "failed")
    assert letter.error == "ValueError: bad input"
    with pytest.raises(TaskFailed):
        result.get(timeout=1)


def test_a_success_recorded_by_a_worker_that_died_before_its_ack_is_acked(
    lost_app: App, clock: FakeClock
) -> None:
    result, ran = _recorded_by_a_lost_worker(lost_app, clock, {"status": "succeeded", "result": 7})
    lost_app.worker(concurrency=1).run_until_idle()

    assert ran == []
    assert _dead_reasons(lost_app) == []
    assert lost_app.kernel.call(lost_app.broker.depth("default"))["ready"] == 0
    assert result.get(timeout=1) == 7
