"""A NATS server restart under a running worker and producer loses and stalls nothing.

The test runs its own nats-server (JetStream on a file store in a temp dir) on a free
port, stops it while a task runs and others wait, and starts it again on the same store.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from taskflow import App
from taskflow.errors import BrokerError
from tests.integration.nats_helpers import (
    private_nats,
    runs,
    shared_url,
    start_nats,
    start_worker,
    stop,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

LEASE = 3.0


def _send_retrying(app: App, name: str, args: tuple[int, ...], within: float) -> str:
    """Enqueue, riding out the seconds the client needs to reconnect."""
    deadline = time.monotonic() + within
    while True:
        try:
            return app.send_task(name, args=args).id
        except BrokerError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_work_survives_a_server_restart(tmp_path: Path) -> None:
    store, runs_dir = tmp_path / "store", tmp_path / "runs"
    store.mkdir()
    runs_dir.mkdir()
    with private_nats(store) as (port, procs):
        url, _ = shared_url(lease=LEASE, port=port)
        worker = start_worker(url, runs_dir, concurrency=4)
        try:
            with App("producer", broker=url) as app:
                before = [app.send_task("it.add", args=(i, i)) for i in range(10)]
                assert [r.get(timeout=20) for r in before] == [2 * i for i in range(10)]
                running = app.send_task("it.sleep", args=(2.0,))
                # Scheduled across the restart: held by the server, not by the worker.
                waiting = [app.send_task("it.add", args=(i, 1), countdown=2.0) for i in range(20)]
                deadline = time.monotonic() + 20
                while not runs(runs_dir, running.id) and time.monotonic() < deadline:
                    time.sleep(0.05)
                stop(procs[0])  # the server goes away under a running task
                down_at = time.monotonic()
                procs.append(start_nats(port, store))
                after = [_send_retrying(app, "it.add", (i, 100), 15) for i in range(10)]
                assert running.get(timeout=LEASE + 30) == worker.pid
                assert [r.get(timeout=30) for r in waiting] == [i + 1 for i in range(20)]
                assert [app.result(t).get(timeout=30) for t in after] == [
                    i + 100 for i in range(10)
                ]
                assert time.monotonic() - down_at < LEASE + 30
                # Nothing ran twice except what the restart interrupted mid-run.
                for result in waiting:
                    assert len(runs(runs_dir, result.id)) == 1
        finally:
            stop(worker)
