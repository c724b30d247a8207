"""Priorities and countdowns on NATS behave exactly as on the in-memory reference broker."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator

import pytest

from taskflow import App
from tests.integration.nats_helpers import drop_prefix, shared_url

pytestmark = [pytest.mark.integration]


@pytest.fixture
def nats_url() -> Iterator[str]:
    url, prefix = shared_url(lease=30.0)
    yield url
    drop_prefix(url, prefix)


def _run_order(broker: str, plan: list[tuple[int, int]]) -> list[int]:
    """Enqueue ``(number, priority)`` with no worker, then run them on one slot."""
    order: list[int] = []
    done = threading.Event()
    with App("prio", broker=broker) as app:

        @app.task(name="it.record")
        def record(number: int) -> None:
            order.append(number)
            if len(order) == len(plan):
                done.set()

        for number, priority in plan:
            record.apply_async(args=(number,), priority=priority)
        with app.worker(concurrency=1, prefetch_buffer=0):
            assert done.wait(30)
    return order


def test_priorities_give_the_same_run_order_as_the_memory_broker(nats_url: str) -> None:
    rng = random.Random(7)
    plan = [(n, rng.randrange(10)) for n in range(60)]
    expected = _run_order("memory://", plan)
    assert expected == [n for n, _ in sorted(plan, key=lambda item: (-item[1], item[0]))]
    assert _run_order(nats_url, plan) == expected


def test_a_countdown_runs_when_due_and_not_before(nats_url: str) -> None:
    with App("countdown", broker=nats_url) as app:
        started: list[float] = []

        @app.task(name="it.stamp")
        def stamp() -> None:
            started.append(time.time())

        with app.worker(concurrency=2):
            sent = time.time()
            later = stamp.apply_async(countdown=1.5)
            now = stamp.apply_async()
            now.get(timeout=10)
            later.get(timeout=10)
        assert len(started) == 2
        assert started[0] - sent < 1.0  # the immediate one did not wait behind the other
        assert sent + 1.5 - 0.05 <= started[1] <= sent + 1.5 + 1.0
