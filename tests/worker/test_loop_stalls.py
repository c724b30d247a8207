"""The worker warns while its event loop stops turning, naming the tasks in their own
code, and once more when it turns again, and counts the stall; a blocking call in a thread
is no stall."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator

import pytest

from taskflow import App
from taskflow.worker import Worker
from tests.cli.helpers import wait_for


@pytest.fixture
def app() -> Iterator[App]:
    application = App("stalls")
    yield application
    application.close()


def watched(worker: Worker, after: float = 0.3) -> Worker:
    """``worker`` with a stall watch quick enough for a test (warn after ``after`` s)."""
    worker.stalls.after, worker.stalls.tick = after, 0.05
    return worker


def stall_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "event loop" in r.getMessage()]


def test_an_async_body_that_blocks_the_loop_is_named_while_it_blocks(
    app: App, caplog: pytest.LogCaptureFixture
) -> None:
    @app.task(name="stalls.blocking")
    async def blocking(seconds: float) -> str:
        time.sleep(seconds)  # the mistake under test: a blocking call in an async def body
        return "done"

    caplog.set_level(logging.WARNING, logger="taskflow.worker")
    with watched(app.worker(concurrency=1)) as worker:
        result = blocking.delay(1.0)
        assert result.get(timeout=10) == "done"
        wait_for(lambda: len(stall_lines(caplog)) == 2, 5, "the line when the loop turns again")

        assert worker.stats()["loop_stalls"] == 1  # the counter its heartbeat carries

    stalled, turned = stall_lines(caplog)
    assert stalled.startswith(f"worker {worker.name}: its event loop has not turned for 0.")
    assert f"stalls.blocking[{result.id}] (async def)" in stalled
    assert "no lease is renewed" in stalled
    assert turned.startswith(f"worker {worker.name}: its event loop turns again, after ")


def test_a_sync_body_blocking_in_its_thread_is_no_stall(
    app: App, caplog: pytest.LogCaptureFixture
) -> None:
    @app.task(name="stalls.sleeping")
    def sleeping(seconds: float) -> str:
        time.sleep(seconds)  # in the body's thread: the loop goes on turning
        return "done"

    caplog.set_level(logging.WARNING, logger="taskflow.worker")
    with watched(app.worker(concurrency=1), after=0.6) as worker:  # below the body's 1 s
        assert sleeping.delay(1.0).get(timeout=10) == "done"
        assert worker.stats()["loop_stalls"] == 0

    assert stall_lines(caplog) == []
    assert "taskflow-stall-watch" not in [t.name for t in threading.enumerate()]  # stopped
