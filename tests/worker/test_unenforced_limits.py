"""A worker says, as it starts, which tasks' ``time_limit`` it cannot enforce: on the
thread pool a sync body runs past it, and no pool kills an ``async def`` body at it."""

from __future__ import annotations

import logging
import sys

import pytest

from taskflow import App

from .limitsapp import APP_PATH, declare_limited


def limit_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "time_limit" in r.getMessage()]


def test_the_thread_pool_names_every_limited_task_of_its_queues(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="taskflow.worker")
    with App("limits-threads") as app:
        declare_limited(app)
        with app.worker(["default", "reports"]) as worker:
            pass

    (line,) = limit_lines(caplog)
    assert line.startswith(f"worker {worker.name}: the time_limit of ")
    named = line.split("the time_limit of ", 1)[1].split(" is not enforced here")[0]
    assert named == (
        "limits.async (async def), limits.report (def, on the thread pool), "
        "limits.sync (def, on the thread pool)"
    )


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX processes")
def test_the_process_pool_names_only_async_bodies(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="taskflow.worker")
    with App("limits-processes") as app:
        declare_limited(app)
        with app.worker(concurrency=1, pool="processes", app_path=APP_PATH) as worker:
            pass

    assert limit_lines(caplog) == [
        f"worker {worker.name}: the time_limit of limits.async (async def) is not enforced "
        "here: only a def body on the process pool (--pool processes) is killed at its "
        "limit; their timeout, if declared, still applies"
    ]


def test_nothing_is_said_when_every_limit_holds(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="taskflow.worker")
    with App("limits-none") as app:
        declare_limited(app)
        with app.worker(["other"]):  # no limited task is declared for it
            pass

    assert limit_lines(caplog) == []
