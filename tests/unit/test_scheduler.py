"""The worker's pure parts: scheduler order, token bucket and backoff, on a fake clock."""

from __future__ import annotations

import random
from collections import Counter
from types import SimpleNamespace
from typing import Any

import pytest

from taskflow import Envelope, FakeClock
from taskflow.options import RateLimit, TaskOptions
from taskflow.worker.policy import backoff_delay
from taskflow.worker.ratelimit import TokenBucket
from taskflow.worker.scheduler import Job, Scheduler

PLAIN = SimpleNamespace(name="plain", options=TaskOptions())


def job(
    task_id: str,
    queue: str = "default",
    priority: int = 0,
    task: Any = PLAIN,
    attempt: int = 1,
    deliveries: int = 1,
) -> Job:
    env = Envelope(id=task_id, task=task.name, queue=queue, priority=priority, attempt=attempt)
    return Job(env, SimpleNamespace(delivery_count=deliveries), task)  # type: ignore[arg-type]


def limited(rate: str, burst: int | None = None) -> Any:
    return SimpleNamespace(
        name=f"limited-{rate}",
        options=TaskOptions.build("limited", {"rate_limit": rate, "rate_burst": burst}),
    )


def pop_ids(sched: Scheduler, n: int | None = None) -> list[str]:
    out: list[str] = []
    while n is None or len(out) < n:
        nxt = sched.pop()
        if nxt is None:
            break
        out.append(nxt.envelope.id)
    return out


# -- order ---------------------------------------------------------------------------
def test_higher_priority_runs_first_and_ties_keep_fifo_order(clock: FakeClock) -> None:
    sched = Scheduler(["default"], {}, clock, 1)
    for i, priority in enumerate([0, 5, 0, 9, 5, 0]):
        sched.push(job(f"t{i}", priority=priority))
    assert len(sched) == 6
    assert pop_ids(sched) == ["t3", "t1", "t4", "t0", "t2", "t5"]
    assert len(sched) == 0


def test_backlogged_queues_share_by_weight(clock: FakeClock) -> None:
    sched = Scheduler(["critical", "bulk"], {"critical": 6, "bulk": 1}, clock, 1)
    for i in range(30):
        sched.push(job(f"c{i}", "critical"))
        sched.push(job(f"b{i}", "bulk"))
    order = pop_ids(sched, 14)
    assert Counter(tid[0] for tid in order) == {"c": 12, "b": 2}
    # Smooth: the bulk queue is not starved until the end of a round.
    assert any(tid.startswith("b") for tid in order[:7])


def test_an_idle_queue_does_not_bank_credit(clock: FakeClock) -> None:
    sched = Scheduler(["a", "b"], {"a": 1, "b": 1}, clock, 1)
    for i in range(5):
        sched.push(job(f"a{i}", "a"))
    assert pop_ids(sched, 4) == ["a0", "a1", "a2", "a3"]
    for i in range(3):
        sched.push(job(f"b{i}", "b"))
    # Equal weights: alternate from now on, b does not get a burst for its idle time.
    assert pop_ids(sched) in (["a4", "b0", "b1", "b2"], ["b0", "a4", "b1", "b2"])


def test_a_job_for_an_unexpected_queue_is_still_scheduled(clock: FakeClock) -> None:
    sched = Scheduler(["a"], {}, clock, 1)
    sched.push(job("x", "elsewhere"))
    assert pop_ids(sched) == ["x"]


def test_fetch_order_puts_the_heaviest_queues_first(clock: FakeClock) -> None:
    sched = Scheduler(
        ["bulk", "default", "critical"], {"critical": 6, "default": 3, "bulk": 1}, clock, 1
    )
    firsts = Counter(sched.fetch_order()[0] for _ in range(100))
    assert firsts["critical"] == 60 and firsts["default"] == 30 and firsts["bulk"] == 10
    assert sorted(sched.fetch_order()) == ["bulk", "critical", "default"]


def test_fetch_order_of_a_single_queue_is_that_queue(clock: FakeClock) -> None:
    assert Scheduler(["only"], {}, clock, 1).fetch_order() == ["only"]


def test_remove_and_drain_take_jobs_out(clock: FakeClock) -> None:
    sched = Scheduler(["default"], {}, clock, 1)
    for i in range(4):
        sched.push(job(f"t{i}", priority=i))
    removed = sched.remove("t2")
    assert removed is not None and removed.envelope.id == "t2"
    assert sched.remove("t2") is None
    assert sorted(j.envelope.id for j in sched.drain()) == ["t0", "t1", "t3"]
    assert len(sched) == 0 and sched.pop() is None


def test_a_redelivery_is_the_same_attempt() -> None:
    assert job("t", attempt=1, deliveries=1).attempt == 1
    assert job("t", attempt=2, deliveries=3).attempt == 2
    assert job("t", attempt=1, deliveries=0).attempt == 1


# -- rate limit gate -----------------------------------------------------------------
def test_rate_limited_jobs_are_held_until_a_token_is_due(clock: FakeClock) -> None:
    task = limited("2/s", burst=1)
    sched = Scheduler(["default"], {}, clock, 4)
    for i in range(3):
        sched.push(job(f"r{i}", task=task))
    assert pop_ids(sched) == ["r0"]
    assert sched.next_release() == pytest.approx(0.5)
    assert sched.ready_count() == 0 and len(sched) == 2
    clock.advance(0.49)
    assert sched.pop() is None
    clock.advance(0.01)
    assert pop_ids(sched) == ["r1"]
    clock.advance(0.5)
    assert pop_ids(sched) == ["r2"]
    assert sched.next_release() is None


def test_a_throttled_task_does_not_block_other_tasks(clock: FakeClock) -> None:
    task = limited("1/m", burst=1)
    sched = Scheduler(["default"], {}, clock, 4)
    sched.push(job("r0", task=task, priority=9))
    sched.push(job("r1", task=task, priority=9))
    sched.push(job("free", priority=0))
    assert pop_ids(sched) == ["r0", "free"]


def test_the_default_burst_is_min_of_concurrency_and_rate(clock: FakeClock) -> None:
    task = limited("10/s")
    sched = Scheduler(["default"], {}, clock, 3)
    for i in range(6):
        sched.push(job(f"r{i}", task=task))
    assert pop_ids(sched) == ["r0", "r1", "r2"]


# -- token bucket --------------------------------------------------------------------
def test_a_token_bucket_starts_full_then_refills_at_its_rate(clock: FakeClock) -> None:
    bucket = TokenBucket(rate=4.0, burst=2, clock=clock)
    assert [bucket.acquire(), bucket.acquire()] == [0.0, 0.0]
    assert bucket.acquire() == pytest.approx(0.25)
    clock.advance(0.25)
    assert bucket.acquire() == 0.0
    clock.advance(100)  # never more than the burst saved up
    assert [bucket.acquire(), bucket.acquire()] == [0.0, 0.0]
    assert bucket.acquire() > 0


def test_a_token_bucket_admits_rate_times_seconds_plus_burst(clock: FakeClock) -> None:
    bucket = TokenBucket(rate=20.0, burst=4, clock=clock)
    admitted = 0
    for _ in range(1000):  # 10 s of 10 ms ticks
        while bucket.acquire() == 0.0:
            admitted += 1
        clock.advance(0.01)
    assert admitted == pytest.approx(20 * 10 + 4, abs=1)


@pytest.mark.parametrize(("rate", "burst"), [(0, 1), (-1, 1), (1, 0)])
def test_a_token_bucket_refuses_nonsense(clock: FakeClock, rate: float, burst: int) -> None:
    with pytest.raises(ValueError):
        TokenBucket(rate, burst, clock)


# -- backoff -------------------------------------------------------------------------
def test_backoff_doubles_per_attempt_up_to_the_cap() -> None:
    delays = [backoff_delay(n, 1.0, 10.0, False) for n in range(1, 7)]
    assert delays == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]


def test_backoff_with_full_jitter_stays_within_zero_and_the_exponential() -> None:
    rng = random.Random(7)
    draws = [backoff_delay(3, 1.0, 60.0, True, rng) for _ in range(500)]
    assert all(0.0 <= d <= 4.0 for d in draws)
    assert min(draws) < 0.5 and max(draws) > 3.5  # really spread, not a constant


def test_backoff_is_reproducible_with_a_seeded_rng() -> None:
    a = [backoff_delay(2, 1.0, 60.0, True, random.Random(1)) for _ in range(3)]
    b = [backoff_delay(2, 1.0, 60.0, True, random.Random(1)) for _ in range(3)]
    assert a == b


def test_backoff_survives_huge_attempt_numbers_and_a_zero_base() -> None:
    assert backoff_delay(10_000, 1.0, 30.0, False) == 30.0
    assert backoff_delay(5, 0.0, 30.0, True) == 0.0


def test_rate_limit_value_object_is_what_the_scheduler_reads() -> None:
    assert limited("3/s", 2).options.rate_limit == RateLimit(3.0, 3.0, 2)
