"""Worker processes that die, restart or run long, on a real Redis.

Each test runs ``taskflow worker`` processes against the shared server under a fresh key
prefix with a short lease, and counts task runs in Redis (see ``redis_worker_app``).
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator

import pytest

from taskflow import App
from taskflow.message import TaskStatus
from tests.integration.redis_helpers import (
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
def target() -> Iterator[tuple[str, str]]:
    url, prefix = shared_url(lease=LEASE)
    yield url, prefix
    drop_prefix(url, prefix)


def test_a_task_of_a_sigkilled_worker_completes_on_another_as_the_same_attempt(
    target: tuple[str, str],
) -> None:
    url, prefix = target
    first = start_worker(url)
    second = None
    try:
        with App("producer", broker=url) as app:
            result = app.send_task("it.sleep", args=(1.5,), retries=2)
            wait_until(lambda: runs(url, prefix, result.id), 20, "the first run to start")
            first.send_signal(signal.SIGKILL)
            first.wait(10)
            killed_at = time.monotonic()
            second = start_worker(url)
            assert result.get(timeout=LEASE + 10) == second.pid
            assert time.monotonic() - killed_at < LEASE + 1.5 + 6
            # A lost delivery is delivered again; it does not spend one of the retries.
            assert result.info().attempts == 1
            assert runs(url, prefix, result.id) == [first.pid, second.pid]
    finally:
        stop(first)
        if second is not None:
            stop(second)


def test_a_task_running_three_leases_long_runs_exactly_once(target: tuple[str, str]) -> None:
    url, prefix = target
    workers = [start_worker(url), start_worker(url)]
    try:
        with App("producer", broker=url) as app:
            result = app.send_task("it.sleep", args=(3 * LEASE,), retries=2)
            assert result.get(timeout=3 * LEASE + 15) in {w.pid for w in workers}
            assert len(runs(url, prefix, result.id)) == 1
            assert result.info().attempts == 1
    finally:
        for worker in workers:
            stop(worker)


def test_a_delayed_task_survives_a_worker_restart_and_runs_on_time(
    target: tuple[str, str],
) -> None:
    url, prefix = target
    first = start_worker(url)
    second = None
    try:
        with App("producer", broker=url) as app:
            wait_until(lambda: app.broker.url and _consuming(app), 20, "the worker to start")
            due = time.time() + 4.0
            result = app.send_task("it.add", args=(1, 2), countdown=4.0)
            assert result.status is TaskStatus.SCHEDULED
            stop(first)  # graceful stop: nothing of the schedule is in its memory
            second = start_worker(url)
            assert result.get(timeout=20) == 3
            started_at = result.info().started_at
            assert started_at is not None
            assert due - 0.05 <= started_at.timestamp() <= due + 1.5
            assert runs(url, prefix, result.id) == [second.pid]
    finally:
        stop(first)
        if second is not None:
            stop(second)


def _consuming(app: App) -> bool:
    """A worker holds the control subscription once it is consuming."""
    client = app.broker._conn.client() if app.kernel.connected else None  # type: ignore[attr-defined]
    if client is None:
        app.kernel.call(app.kernel.connect())
        return False
    channels = app.kernel.call(client.pubsub_numsub(app.broker.key("control")))  # type: ignore[attr-defined]
    return bool(channels and channels[0][1] > 0)
