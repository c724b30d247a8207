"""The helpers in taskflow.testing run tasks without sleeping."""

from __future__ import annotations

from taskflow import FakeClock, TaskStatus
from taskflow.testing import drain, running_worker, test_app


def test_drain_runs_due_tasks_and_waits_for_the_clock_for_countdowns() -> None:
    clock = FakeClock()
    with test_app(clock=clock) as app:

        @app.task
        def double(x: int) -> int:
            return 2 * x

        now = double.delay(2)
        later = double.apply_async(args=(5,), countdown=30)
        assert drain(app) == 1
        assert now.get(timeout=1) == 4
        assert later.status is TaskStatus.SCHEDULED
        clock.advance(30)
        assert drain(app) == 1
        assert later.get(timeout=1) == 10


def test_running_worker_runs_tasks_in_the_background_and_stops() -> None:
    with test_app() as app:

        @app.task
        async def hello(name: str) -> str:
            return f"hello {name}"

        with running_worker(app) as worker:
            assert hello.delay("ada").get(timeout=5) == "hello ada"
        assert worker.stats()["state"] == "stopped"
