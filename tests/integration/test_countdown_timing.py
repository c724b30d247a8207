"""Sub-second countdowns and retry delays run on time through a real worker, on every
backend: within 50 ms of their due time (see ``tests/on_time.py``)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from taskflow import App, Retry
from tests.amqp import amqp_helpers
from tests.integration import nats_helpers, redis_helpers
from tests.on_time import assert_on_time

pytestmark = pytest.mark.integration

COUNTDOWNS = 40
RETRIES = 10


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
            stamp.delay().get(timeout=10)  # warm up; the worker is idle between sends
            due: dict[str, float] = {}
            results = []
            # Latest first, 20 ms apart: each is due before every one sent before it.
            for countdown in [0.2 + 0.02 * i for i in reversed(range(COUNTDOWNS))]:
                due_at = time.time() + countdown  # before the send: the real due is later
                result = stamp.apply_async(countdown=countdown)
                due[result.id] = due_at
                results.append(result)
            late = [r.get(timeout=10) - due[r.id] for r in results]
            sent = [again.delay() for _ in range(RETRIES)]
            late += [r.get(timeout=10) - retried[r.id] for r in sent]
    assert_on_time(late, COUNTDOWNS + RETRIES)
