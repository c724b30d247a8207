"""Sub-second countdowns and retry delays run on time through a real worker, on every
backend: within 50 ms of their due time."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from taskflow import App, Retry
from tests.amqp import amqp_helpers
from tests.integration import nats_helpers, redis_helpers

pytestmark = pytest.mark.integration

ON_TIME = 0.05


@pytest.fixture(params=["memory", "redis", "nats", "amqp"])
def url(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    if request.param == "memory":
        yield "memory://"
        return
    if request.param == "amqp":
        broker, results, prefix = amqp_helpers.shared_urls(lease=5)
        monkeypatch.setenv("TASKFLOW_RESULTS_URL", results)  # RabbitMQ keeps no results
        yield broker
        amqp_helpers.drop(prefix, {"default"})
        return
    helpers = redis_helpers if request.param == "redis" else nats_helpers
    address, prefix = helpers.shared_url(lease=5)
    yield address
    helpers.drop_prefix(address, prefix)


def test_countdowns_and_retry_delays_of_a_fraction_of_a_second_run_on_time(url: str) -> None:
    with App("timing", broker=url) as app:

        @app.task
        def stamp() -> float:
            return time.time()

        retried: dict[str, float] = {}

        @app.task(bind=True, retries=1)
        def again(ctx: object) -> float:
            task_id = ctx.id  # type: ignore[attr-defined]
            if task_id not in retried:
                retried[task_id] = time.time() + 0.2
                raise Retry(countdown=0.2)
            return time.time()

        with app.worker(concurrency=4):
            stamp.delay().get(timeout=10)  # warm up; the worker is idle from here on
            late = []
            for _ in range(10):
                due = time.time() + 0.2
                late.append(stamp.apply_async(countdown=0.2).get(timeout=10) - due)
                time.sleep(0.02)
            sent = [again.delay() for _ in range(5)]
            late += [r.get(timeout=10) - retried[r.id] for r in sent]
    late.sort()
    assert late[0] > -0.005, f"ran {-late[0]:.3f}s early"
    # The target is 50 ms at the 99th percentile; 15 samples cannot show a percentile, and
    # one may be late on a busy machine. A wait on a timer of its own (not the server's
    # 100 ms tick, not a one-second poll) keeps all but the last within the target.
    assert late[-2] <= ON_TIME, f"late: {late}"
    assert late[-1] <= 2 * ON_TIME, f"up to {late[-1]:.3f}s late: {late}"
