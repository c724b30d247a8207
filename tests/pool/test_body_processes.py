"""Processes a body starts in a child of the process pool (a program, multiprocessing's
fork): they end with the child, they take SIGTERM as usual, and they cannot keep the
worker from seeing the child end (real processes)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest

from taskflow.errors import TaskFailed
from tests.cli.helpers import alive, pids, wait_for

from .conftest import APP_PATH, PoolApp

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX processes")


@pytest.mark.parametrize("how", ["subprocess", "fork"])
def test_what_a_body_started_ends_with_it_at_its_time_limit(
    pool_app: PoolApp, tmp_path: Path, how: str
) -> None:
    # A forked process holds copies of the child's pipes unless the child closes them in
    # it: the worker would wait for it to end (a minute) before seeing the time limit.
    app, tasks = pool_app
    with app.worker(concurrency=1, pool="processes", app_path=APP_PATH):
        result = tasks["start_then_block"].delay(str(tmp_path), how, 30.0)
        with pytest.raises(TaskFailed) as caught:
            result.get(timeout=10)
        (grandchild,) = pids(tmp_path, "grandchild")
        wait_for(lambda: not alive(grandchild), 5, f"the {how} process to end")
        served = tasks["whoami"].delay(1).get(timeout=10)  # the worker serves on

    assert caught.value.exc_type == "taskflow.errors.TaskTimeout"
    assert served not in pids(tmp_path, "started")  # a new child


def test_a_child_that_crashes_is_seen_at_once_though_a_process_it_forked_lives_on(
    pool_app: PoolApp, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    app, tasks = pool_app
    caplog.set_level(logging.WARNING, logger="taskflow.worker")
    with app.worker(concurrency=1, pool="processes", app_path=APP_PATH):
        tasks["start_then_crash"].delay(str(tmp_path))
        wait_for(lambda: "exited with status 3" in caplog.text, 5, "the lost child's line")
        (grandchild,) = pids(tmp_path, "grandchild")
        wait_for(lambda: not alive(grandchild), 5, "the forked process to end")
        assert tasks["whoami"].delay(1).get(timeout=10) > 0


def test_what_a_body_starts_ends_on_sigterm(pool_app: PoolApp) -> None:
    # The child takes no notice of SIGTERM (the worker decides when it ends); what a body
    # starts must not inherit that, or terminate() would do nothing.
    app, tasks = pool_app
    with app.worker(concurrency=1, pool="processes", app_path=APP_PATH):
        statuses = tasks["terminate_what_it_starts"].delay().get(timeout=30)

    assert statuses == [-15, -15]
