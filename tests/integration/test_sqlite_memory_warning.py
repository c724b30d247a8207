"""``taskflow worker`` on an app whose broker is ``memory://`` warns at start that no other
process can reach it (and points to sqlite:// or a server); on an SQLite file it does not."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from tests.cli.helpers import running, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(60)]

APP = "tests.integration.sqlite_worker_app"
WARNING = (
    "WARNING taskflow.cli: the broker is memory:// (in this process only): producers in "
    "other processes cannot send to this worker; use sqlite:///path.db or a server"
)


def run_until_consuming(url: str, tmp_path: Path) -> str:
    """Start a worker on ``url``, wait until it consumes, stop it; its stderr."""
    env = {"TASKFLOW_BROKER_URL": url, "RUNS_FILE": str(tmp_path / "runs.txt")}
    with running(["worker", "-A", APP, "-c", "1"], tmp_path, env=env) as worker:
        wait_for(lambda: "consuming default" in worker.stderr, 30, "the worker to consume")
        worker.signal(signal.SIGTERM)
        assert worker.wait(30) == 0, worker.stderr
        return worker.stderr


def test_a_worker_on_memory_warns_that_other_processes_cannot_reach_it(tmp_path: Path) -> None:
    stderr = run_until_consuming("memory://", tmp_path)
    warned = [line for line in stderr.splitlines() if WARNING in line]
    assert len(warned) == 1, stderr
    # Said at start: before the worker consumes.
    assert stderr.index(WARNING) < stderr.index("consuming default")


def test_a_worker_on_an_sqlite_file_does_not_warn(tmp_path: Path) -> None:
    stderr = run_until_consuming(f"sqlite:///{tmp_path / 'tasks.db'}", tmp_path)
    assert "memory://" not in stderr, stderr
