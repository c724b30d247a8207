"""A broker that takes deliveries back after a fixed time (RabbitMQ's consumer_timeout)
refuses, at worker start, a task that may run longer."""

from __future__ import annotations

import pytest

from taskflow import App
from taskflow.brokers.memory import MemoryBroker
from taskflow.errors import ConfigError


class BoundedBroker(MemoryBroker):
    """An in-memory broker that claims a 60 s bound on unacknowledged deliveries."""

    def max_hold(self) -> float | None:
        return 60.0


def test_a_task_that_may_outlive_the_brokers_bound_stops_the_worker_at_start() -> None:
    app = App("bounded", broker=BoundedBroker(), default_timeout=30.0)
    try:

        @app.task(name="shop.report", timeout=120.0)
        def report() -> None: ...

        with pytest.raises(ConfigError, match=r"'shop\.report' has a 120s timeout.*60s"):
            app.worker(concurrency=1).run_until_idle()
        with pytest.raises(ConfigError, match=r"shop\.report"):
            app.worker(concurrency=1).start()
    finally:
        app.close()


def test_the_apps_default_timeout_counts_and_no_timeout_is_refused() -> None:
    app = App("bounded", broker=BoundedBroker(), default_timeout=None)
    try:

        @app.task(name="shop.forever")
        def forever() -> None: ...

        with pytest.raises(ConfigError, match=r"'shop\.forever' has no timeout"):
            app.worker(concurrency=1).run_until_idle()
    finally:
        app.close()


def test_tasks_within_the_bound_run() -> None:
    app = App("bounded", broker=BoundedBroker(), default_timeout=59.0)
    try:

        @app.task(name="shop.quick")
        def quick() -> int:
            return 1

        @app.task(name="shop.capped", timeout=10.0)
        def capped() -> int:
            return 2

        results = [quick.delay(), capped.delay()]
        assert app.worker(concurrency=1).run_until_idle() == 2
        assert [r.get(timeout=1) for r in results] == [1, 2]
    finally:
        app.close()
