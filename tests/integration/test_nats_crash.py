"""Worker processes that die, restart or run long, on a real NATS JetStream.

Each test runs ``taskflow worker`` processes against the shared server under a fresh
prefix (its own streams and buckets) with a short lease; task runs are counted in files.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from taskflow import App
from taskflow.message import TaskStatus
from tests.integration.nats_helpers import (
    drop_prefix,
    runs,
    shared_url,
    start_worker,
    stop,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

LEASE = 2.0


@pytest.fixture
def target() -> Iterator[str]:
    url, prefix = shared_url(lease=LEASE)
    yield url
    drop_prefix(url, prefix)


def test_a_task_of_a_sigkilled_worker_completes_on_another_as_the_same_attempt(
    target: str, tmp_path: Path
) -> None:
    first = start_worker(target, tmp_path)
    second = None
    try:
        with App("producer", broker=target) as app:
            result = app.send_task("it.sleep", args=(1.5,), retries=2)
            wait_until(lambda: runs(tmp_path, result.id), 20, "the first run to start")
            first.send_signal(signal.SIGKILL)
            first.wait(10)
            killed_at = time.monotonic()
            second = start_worker(target, tmp_path)
            assert result.get(timeout=LEASE + 15) == second.pid
            # Redelivered once the dead worker's lease ran out, not much later.
            assert time.monotonic() - killed_at < LEASE + 1.5 + 8
            # A lost delivery is delivered again; it does not spend one of the retries.
            assert result.info().attempts == 1
            assert runs(tmp_path, result.id) == [first.pid, second.pid]
    finally:
        stop(first)
        if second is not None:
            stop(second)


def test_a_task_running_three_leases_long_runs_exactly_once(target: str, tmp_path: Path) -> None:
    workers = [start_worker(target, tmp_path), start_worker(target, tmp_path)]
    try:
        with App("producer", broker=target) as app:
            result = app.send_task("it.sleep", args=(3 * LEASE,), retries=2)
            assert result.get(timeout=3 * LEASE + 20) in {w.pid for w in workers}
            assert len(runs(tmp_path, result.id)) == 1
            assert result.info().attempts == 1
    finally:
        for worker in workers:
            stop(worker)


def test_a_delayed_task_survives_a_worker_restart_and_runs_on_time(
    target: str, tmp_path: Path
) -> None:
    first = start_worker(target, tmp_path)
    second = None
    try:
        with App("producer", broker=target) as app:
            warm = app.send_task("it.add", args=(0, 0))
            assert warm.get(timeout=20) == 0  # the first worker is consuming
            due = time.time() + 4.0
            result = app.send_task("it.add", args=(1, 2), countdown=4.0)
            assert result.status is TaskStatus.SCHEDULED
            stop(first)  # graceful stop: nothing of the schedule is in its memory
            second = start_worker(target, tmp_path)
            assert result.get(timeout=20) == 3
            started_at = result.info().started_at
            assert started_at is not None
            assert due - 0.05 <= started_at.timestamp() <= due + 1.5
            assert runs(tmp_path, result.id) == [second.pid]
    finally:
        stop(first)
        if second is not None:
            stop(second)
