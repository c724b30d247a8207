"""A task whose workers keep dying is failed with WorkerLost, never left 'running'."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from taskflow import App, FakeClock, TaskFailed, TaskStatus
from taskflow.brokers import MemoryBroker


@pytest.fixture
def lost_app(clock: FakeClock) -> Iterator[App]:
    application = App("lost", broker=MemoryBroker(lease=10.0, clock=clock), clock=clock)
    yield application
    application.close()


def _lease_and_die(app: App) -> None:
    """Take the message like a worker would, then vanish without settling it."""

    async def take() -> None:
        got = await app.broker.fetch(["default"], 1, 0)
        assert len(got) == 1

    app._call(take())
    app._call(
        app.results.update(
            got_id(app), {"status": "running", "attempts": 1, "worker": "dead"}, None
        )
    )


def got_id(app: App) -> str:
    return next(iter(app.broker._messages))  # type: ignore[attr-defined]


def test_task_without_retries_is_failed_with_worker_lost_when_its_lease_runs_out(
    lost_app: App, clock: FakeClock
) -> None:
    @lost_app.task
    def job() -> int:
        return 1

    result = job.delay()
    _lease_and_die(lost_app)
    assert result.status is TaskStatus.RUNNING

    clock.advance(11.0)
    lost_app.worker(concurrency=1).run_until_idle()

    assert result.status is TaskStatus.FAILED
    with pytest.raises(TaskFailed) as info:
        result.get(timeout=1)
    assert info.value.exc_type == "taskflow.errors.WorkerLost"
    dead = lost_app._call(lost_app.broker.dead_letters("default"))
    assert [d.reason for d in dead] == ["worker_lost"]


def test_task_with_retries_is_redelivered_and_counts_the_lost_attempt(
    lost_app: App, clock: FakeClock
) -> None:
    @lost_app.task(retries=1)
    def job() -> int:
        return 7

    result = job.delay()
    _lease_and_die(lost_app)

    clock.advance(11.0)
    assert lost_app.worker(concurrency=1).run_until_idle() == 1

    assert result.get(timeout=1) == 7
    assert result.info().attempts == 2
