"""``--scheduling``: a real worker process runs every thread under ``SCHED_BATCH`` by
default (the body's thread too), under the system's default policy with ``normal``; the
processes of ``-P 2`` alike, while their supervisor, which runs no task, keeps the
default."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from taskflow import App
from tests.integration.redis_helpers import stop, wait_until
from tests.integration.sqlite_helpers import start_worker

pytestmark = pytest.mark.skipif(not hasattr(os, "SCHED_BATCH"), reason="Linux only")


def thread_policies(pid: int) -> set[int]:
    """The scheduling policies of the threads of process ``pid``."""
    found: set[int] = set()
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            found.add(os.sched_getscheduler(int(tid)))
        except ProcessLookupError:
            continue  # ended meanwhile
    return found


def policies_seen_by_a_task(
    tmp_path: Path, options: tuple[str, ...] = (), env: dict[str, str] | None = None
) -> tuple[dict[str, int], set[int]]:
    """Run ``it.policies`` on a worker started with ``options``: what the body saw (its own
    thread's policy and each thread's), and the worker's threads' policies seen from here."""
    url = f"sqlite:///{tmp_path}/tasks.db"
    worker = start_worker(url, tmp_path / "runs.txt", options=options, env=env)
    try:
        with App("producer", broker=url) as app:
            seen = app.send_task("it.policies").get(timeout=30)
        outside = thread_policies(worker.pid)
    finally:
        stop(worker)
    assert worker.returncode == 0
    return seen, outside


def test_a_worker_runs_its_threads_under_the_batch_policy_by_default(tmp_path: Path) -> None:
    seen, outside = policies_seen_by_a_task(tmp_path)
    assert seen["body"] == os.SCHED_BATCH
    assert set(seen.values()) == {os.SCHED_BATCH}  # the loop's thread and every other
    assert outside == {os.SCHED_BATCH}


def test_normal_leaves_the_systems_default_policy(tmp_path: Path) -> None:
    seen, outside = policies_seen_by_a_task(tmp_path, ("--scheduling", "normal"))
    assert set(seen.values()) == {os.SCHED_OTHER}
    assert outside == {os.SCHED_OTHER}


def test_the_environment_variable_stands_in_for_the_option(tmp_path: Path) -> None:
    seen, _ = policies_seen_by_a_task(tmp_path, env={"TASKFLOW_SCHEDULING": "normal"})
    assert set(seen.values()) == {os.SCHED_OTHER}


def test_the_processes_of_a_supervisor_run_batch_and_the_supervisor_does_not(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path}/tasks.db"
    worker = start_worker(url, tmp_path / "runs.txt", processes=2)
    try:
        path = Path(f"/proc/{worker.pid}/task/{worker.pid}/children")
        wait_until(lambda: len(path.read_text().split()) == 2, 30, "the worker processes")
        kids = [int(word) for word in path.read_text().split()]
        with App("producer", broker=url) as app:  # both serve once a task has run
            app.send_task("it.policies").get(timeout=30)
        wait_until(
            lambda: all(thread_policies(kid) == {os.SCHED_BATCH} for kid in kids),
            30,
            "both processes under the batch policy",
        )
        assert thread_policies(worker.pid) == {os.SCHED_OTHER}
    finally:
        stop(worker)
    assert worker.returncode == 0
