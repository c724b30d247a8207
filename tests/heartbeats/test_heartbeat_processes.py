"""Heartbeats of real worker processes on real backends (Redis, NATS, SQLite).

A worker process with a 0.2 s heartbeat is listed with its pid as soon as it runs, shows
the task it runs, and after a SIGKILL its ``last_seen`` stops moving (lost by the rule of
three missed heartbeats) until its entry vanishes once its retention has passed. A worker
stopped with SIGTERM removes its entry itself; each process of ``-P 2`` has its own entry.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from taskflow import App
from tests.integration import nats_helpers, redis_helpers
from tests.integration.redis_helpers import ROOT, stop, wait_until
from tests.integration.sqlite_helpers import start_worker as start_sqlite_cli_worker

pytestmark = [pytest.mark.integration, pytest.mark.slow]

INTERVAL = 0.2
RETENTION = 2.0
LOST_AFTER = 3 * INTERVAL  # what the operations API calls lost


class Backend:
    """Where a worker process runs: its app module, URL and environment."""

    def __init__(self, module: str, url: str, env: dict[str, str]) -> None:
        self.module = module
        self.url = url
        self.env = {**os.environ, **env, "TASKFLOW_BROKER_URL": url, "PYTHONPATH": str(ROOT)}

    def start(self) -> subprocess.Popen[bytes]:
        command = [sys.executable, "-m", "tests.heartbeats.heartbeat_worker", self.module]
        command += [str(INTERVAL), str(RETENTION)]
        return subprocess.Popen(command, cwd=ROOT, env=self.env)


@pytest.fixture(params=["redis", "nats", "sqlite"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    name = str(request.param)
    if name == "redis":
        url, prefix = redis_helpers.shared_url(lease=30.0)
        yield Backend("tests.integration.redis_worker_app", url, {})
        redis_helpers.drop_prefix(url, prefix)
    elif name == "nats":
        url, prefix = nats_helpers.shared_url(lease=30.0)
        yield Backend("tests.integration.nats_worker_app", url, {"TF_RUNS_DIR": str(tmp_path)})
        nats_helpers.drop_prefix(url, prefix)
    else:
        url = f"sqlite:///{tmp_path}/tasks.db?lease=30"
        runs = str(tmp_path / "runs.txt")
        yield Backend("tests.integration.sqlite_worker_app", url, {"RUNS_FILE": runs})


def entries(app: App) -> list[dict[str, Any]]:
    return app.kernel.lookup(app.kernel.results.workers)


def entry_of(app: App, pid: int) -> dict[str, Any] | None:
    found = [e for e in entries(app) if e["pid"] == pid]
    assert len(found) <= 1
    return found[0] if found else None


def seen(app: App, pid: int, check: Callable[[dict[str, Any]], bool]) -> Callable[[], bool]:
    def predicate() -> bool:
        entry = entry_of(app, pid)
        return entry is not None and check(entry)

    return predicate


def test_a_sigkilled_worker_stops_beating_and_its_entry_vanishes_after_retention(
    backend: Backend,
) -> None:
    proc = backend.start()
    try:
        with App("observer", broker=backend.url) as app:
            wait_until(seen(app, proc.pid, lambda e: True), 30, "the worker's entry")
            entry = entry_of(app, proc.pid)
            assert entry is not None
            assert entry["heartbeat"] == INTERVAL
            assert entry["queues"] == ["default"]
            assert entry["concurrency"] == 2

            result = app.send_task("it.sleep", args=(60.0,))
            wait_until(
                seen(app, proc.pid, lambda e: e["running"] == [result.id]),
                20,
                "the running task in the heartbeat",
            )
            [alive] = [w for w in app.admin.workers() if w.pid == proc.pid]
            assert (alive.state, alive.running) == ("alive", [result.id])
            before = entry_of(app, proc.pid)
            assert before is not None
            wait_until(
                seen(app, proc.pid, lambda e: e["last_seen"] > before["last_seen"]),
                5 * INTERVAL + 2,
                "the next heartbeat",
            )

            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            last = entry_of(app, proc.pid)
            assert last is not None
            time.sleep(LOST_AFTER + INTERVAL)  # real time: three heartbeats go missing
            after = entry_of(app, proc.pid)
            assert after is not None, "a lost worker stays listed until its retention"
            assert after["last_seen"] == last["last_seen"]
            assert time.time() - after["last_seen"] > LOST_AFTER
            [lost] = [w for w in app.admin.workers() if w.pid == proc.pid]
            assert lost.state == "lost"

            wait_until(lambda: entry_of(app, proc.pid) is None, RETENTION + 5, "expiry")
            assert time.time() >= last["last_seen"] + RETENTION - 0.05
    finally:
        stop(proc, signal.SIGKILL)


def test_a_worker_stopped_with_sigterm_removes_its_entry(backend: Backend) -> None:
    proc = backend.start()
    try:
        with App("observer", broker=backend.url) as app:
            wait_until(seen(app, proc.pid, lambda e: True), 30, "the worker's entry")
            stop(proc)
            assert proc.returncode == 0
            # Removed by the worker itself, well before its retention would end it.
            assert entry_of(app, proc.pid) is None
    finally:
        stop(proc, signal.SIGKILL)


def test_each_process_of_a_multi_process_worker_has_its_own_entry(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/tasks.db?lease=30"
    supervisor = start_sqlite_cli_worker(url, tmp_path / "runs.txt", processes=2)
    try:
        with App("observer", broker=url) as app:
            wait_until(lambda: len(entries(app)) == 2, 30, "two entries")
            listed = entries(app)
            assert len({e["id"] for e in listed}) == 2
            pids = {e["pid"] for e in listed}
            assert len(pids) == 2
            assert supervisor.pid not in pids  # its children run the workers
            stop(supervisor)
            assert supervisor.returncode == 0
            assert entries(app) == []
    finally:
        stop(supervisor, signal.SIGKILL)
