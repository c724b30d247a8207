"""Admission against cluster-wide limits, on the memory broker and a fake clock.

The memory broker's limiter is shared by every worker of the process, so two workers of
one app here stand for two workers of a cluster.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest

from taskflow import App, FakeClock
from taskflow.brokers import MemoryBroker
from taskflow.brokers.limits import ClusterLimiter
from taskflow.errors import BrokerError, ConfigError
from taskflow.worker.cluster_limits import PERMIT_POLL


def depth(app: App, queue: str = "default") -> dict[str, int]:
    return app.kernel.call(app.broker.depth(queue))


def limiter(app: App) -> ClusterLimiter:
    found = app.broker.limiter()
    assert found is not None
    return found


def hold_permit(app: App, task: str, holder: str, limit: int) -> None:
    """A permit taken by another worker."""
    assert app.kernel.call(limiter(app).acquire(task, holder, limit)) == 0.0


class CountingLimiter(ClusterLimiter):
    """Wraps a limiter and counts the round trips a worker makes to it."""

    def __init__(self, inner: ClusterLimiter) -> None:
        self.inner = inner
        self.lease = inner.lease
        self.calls = 0

    async def take_token(self, key: str, rate: float, burst: int) -> float:
        self.calls += 1
        return await self.inner.take_token(key, rate, burst)

    async def acquire(self, key: str, holder: str, limit: int) -> float:
        self.calls += 1
        return await self.inner.acquire(key, holder, limit)

    async def renew(self, key: str, holders: Sequence[str]) -> list[bool]:
        return await self.inner.renew(key, holders)

    async def release(self, key: str, holder: str) -> None:
        await self.inner.release(key, holder)


class CountingBroker(MemoryBroker):
    def __init__(self, clock: FakeClock) -> None:
        super().__init__(clock=clock)
        self.counting = CountingLimiter(super().limiter())

    def limiter(self) -> ClusterLimiter:
        return self.counting


class AwayLimiter(CountingLimiter):
    """A limiter whose backend is away until ``away`` is cleared."""

    away = True

    async def acquire(self, key: str, holder: str, limit: int) -> float:
        if self.away:
            raise BrokerError("redis://127.0.0.1:6379/0: connection refused")
        return await super().acquire(key, holder, limit)


class AwayBroker(MemoryBroker):
    def __init__(self, clock: FakeClock) -> None:
        super().__init__(clock=clock)
        self.away = AwayLimiter(super().limiter())

    def limiter(self) -> ClusterLimiter:
        return self.away


class NoLimiterBroker(MemoryBroker):
    """A broker that cannot share a limit."""

    def limiter(self) -> None:
        return None


# -- rate ------------------------------------------------------------------------------
def test_a_cluster_rate_limit_spaces_starts_evenly(fake_app: App, clock: FakeClock) -> None:
    @fake_app.task(cluster_rate_limit="2/s")
    def job(n: int) -> None: ...

    for n in range(5):
        job.delay(n)
    worker = fake_app.worker(concurrency=4)
    assert worker.run_until_idle() == 1  # no burst: one start per 0.5 s
    assert depth(fake_app)["ready"] == 4  # the waiting ones went back uncounted
    clock.advance(0.5)
    assert worker.run_until_idle() == 1
    clock.advance(1.0)
    assert worker.run_until_idle() == 1  # a gap saves up no tokens


def test_two_workers_share_one_cluster_rate(fake_app: App, clock: FakeClock) -> None:
    @fake_app.task(cluster_rate_limit="1/s")
    def job(n: int) -> None: ...

    for n in range(4):
        job.delay(n)
    first, second = fake_app.worker(concurrency=2), fake_app.worker(concurrency=2)
    assert first.run_until_idle() == 1
    assert second.run_until_idle() == 0  # the token went to the first worker
    clock.advance(1.0)
    assert second.run_until_idle() == 1
    assert first.run_until_idle() == 0


def test_a_per_process_rate_limit_is_not_shared(fake_app: App) -> None:
    @fake_app.task(rate_limit="1/s", rate_burst=1)
    def job(n: int) -> None: ...

    for n in range(4):
        job.delay(n)
    assert fake_app.worker(concurrency=2).run_until_idle() == 1
    assert fake_app.worker(concurrency=2).run_until_idle() == 1


# -- concurrency -----------------------------------------------------------------------
def test_cluster_concurrency_bounds_jobs_running_at_once(fake_app: App) -> None:
    running: list[int] = [0, 0]  # now, most at once

    @fake_app.task(cluster_concurrency=2)
    async def job(n: int) -> int:
        running[0] += 1
        running[1] = max(running[1], running[0])
        for _ in range(5):
            await asyncio.sleep(0)  # let the other slots' jobs start beside this one
        running[0] -= 1
        return n

    results = [job.delay(n) for n in range(8)]
    assert fake_app.worker(concurrency=6).run_until_idle() == 8
    assert [r.get(timeout=1) for r in results] == list(range(8))
    assert running[1] == 2


def test_a_waiting_job_does_not_hold_a_slot(fake_app: App) -> None:
    @fake_app.task(cluster_concurrency=1)
    def limited() -> str:
        return "limited"

    @fake_app.task
    def free() -> str:
        return "free"

    hold_permit(fake_app, limited.name, "another-worker", 1)
    waiting = limited.delay()
    done = free.delay()
    # One slot: the refused job waits outside it, so the other task runs.
    assert fake_app.worker(concurrency=1).run_until_idle() == 1
    assert done.get(timeout=1) == "free"
    assert not waiting.ready()
    assert depth(fake_app)["ready"] == 1  # handed back, not lost

    fake_app.kernel.call(limiter(fake_app).release(limited.name, "another-worker"))
    assert fake_app.worker(concurrency=1).run_until_idle() == 1
    assert waiting.get(timeout=1) == "limited"


def test_a_dead_holders_permit_comes_back_after_its_lease(fake_app: App, clock: FakeClock) -> None:
    @fake_app.task(cluster_concurrency=1)
    def job() -> str:
        return "ran"

    hold_permit(fake_app, job.name, "worker-that-died", 1)
    result = job.delay()
    worker = fake_app.worker(concurrency=2)
    assert worker.run_until_idle() == 0
    clock.advance(limiter(fake_app).lease - 1)
    assert worker.run_until_idle() == 0  # still within the lease
    clock.advance(1.0)
    assert worker.run_until_idle() == 1
    assert result.get(timeout=1) == "ran"


def test_a_permit_is_released_when_the_job_fails(fake_app: App) -> None:
    @fake_app.task(cluster_concurrency=1)
    def job(n: int) -> None:
        raise ValueError(n)

    for n in range(3):
        job.delay(n)
    assert fake_app.worker(concurrency=2).run_until_idle() == 3
    assert fake_app.kernel.call(limiter(fake_app).acquire(job.name, "probe", 1)) == 0.0


def test_waiting_jobs_of_one_task_ask_the_backend_once(clock: FakeClock) -> None:
    broker = CountingBroker(clock)
    app = App("counting", broker=broker, clock=clock)
    try:

        @app.task(cluster_concurrency=1)
        def job(n: int) -> None: ...

        hold_permit(app, job.name, "another-worker", 1)
        for n in range(10):
            job.delay(n)
        broker.counting.calls = 0
        assert app.worker(concurrency=8).run_until_idle() == 0
        # One refused ask blocks the task for a bounded wait; the others do not ask.
        assert broker.counting.calls == 1
    finally:
        app.close()


def test_both_limits_together(fake_app: App, clock: FakeClock) -> None:
    @fake_app.task(cluster_rate_limit="1/s", cluster_concurrency=1)
    def job(n: int) -> int:
        return n

    results = [job.delay(n) for n in range(3)]
    worker = fake_app.worker(concurrency=3)
    assert worker.run_until_idle() == 1
    clock.advance(1.0)
    assert worker.run_until_idle() == 1
    clock.advance(1.0)
    assert worker.run_until_idle() == 1
    assert [r.get(timeout=1) for r in results] == [0, 1, 2]


# -- configuration ---------------------------------------------------------------------
def test_a_broker_that_cannot_share_a_limit_refuses_to_start_the_worker() -> None:
    app = App("nolimits", broker=NoLimiterBroker())
    try:

        @app.task(cluster_concurrency=2, name="shop.charge")
        def charge() -> None: ...

        with pytest.raises(ConfigError, match=r"shop\.charge.*NoLimiterBroker"):
            app.worker(concurrency=1).run_until_idle()
        with pytest.raises(ConfigError, match=r"shop\.charge.*NoLimiterBroker"):
            app.worker(concurrency=1).start()
    finally:
        app.close()


def test_a_broker_without_a_limiter_still_runs_tasks_without_cluster_limits() -> None:
    app = App("nolimits", broker=NoLimiterBroker())
    try:

        @app.task
        def plain() -> int:
            return 1

        result = plain.delay()
        assert app.worker(concurrency=1).run_until_idle() == 1
        assert result.get(timeout=1) == 1
    finally:
        app.close()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"cluster_concurrency": 0}, "cluster_concurrency must be a positive integer"),
        ({"cluster_concurrency": True}, "cluster_concurrency must be a positive integer"),
        ({"cluster_concurrency": 1.5}, "cluster_concurrency must be a positive integer"),
        ({"cluster_rate_limit": "5/fortnight"}, "malformed cluster_rate_limit"),
        ({"cluster_rate_limit": -1}, "cluster_rate_limit must be positive"),
    ],
)
def test_bad_cluster_limits_are_refused_naming_the_task(
    app: App, options: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=rf"shop\.job: {message}"):

        @app.task(name="shop.job", **options)
        def job() -> None: ...


def test_cluster_rate_limit_takes_the_rate_limit_forms(app: App) -> None:
    for form, rate in (("6/m", 0.1), ("7200/h", 2.0), ("3/s", 3.0), (0.5, 0.5)):

        @app.task(name=f"job{rate}", cluster_rate_limit=form)
        def job() -> None: ...

        limit = job.options.cluster_rate_limit
        assert limit is not None
        assert limit.rate == pytest.approx(rate)


def test_a_job_keeps_its_local_token_while_it_waits_for_a_permit(fake_app: App) -> None:
    @fake_app.task(rate_limit="10/s", rate_burst=2, cluster_concurrency=1)
    def job(n: int) -> None: ...

    job.delay(1)
    job.delay(2)
    # Both take one of the two local tokens; the second waits for the first one's permit
    # and then runs without asking the (empty) local bucket again.
    assert fake_app.worker(concurrency=2).run_until_idle() == 2


def test_a_limiter_that_is_away_defers_jobs_without_losing_them(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    broker = AwayBroker(clock)
    app = App("away", broker=broker, clock=clock)
    try:

        @app.task(cluster_concurrency=1)
        def job(n: int) -> int:
            return n

        results = [job.delay(n) for n in range(3)]
        worker = app.worker(concurrency=2)
        with caplog.at_level("WARNING", logger="taskflow.worker"):
            assert worker.run_until_idle() == 0
        assert depth(app)["ready"] == 3  # handed back, none lost
        assert sum("cluster-wide limits" in r.getMessage() for r in caplog.records) == 1
        broker.away.away = False
        clock.advance(PERMIT_POLL)
        assert worker.run_until_idle() == 3
        assert [r.get(timeout=1) for r in results] == [0, 1, 2]
    finally:
        app.close()
