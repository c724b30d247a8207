"""A redis-server restart under a running worker: every task before and after completes."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from taskflow import App
from tests.integration.redis_helpers import private_redis, start_redis, start_worker, stop

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_a_worker_resumes_after_the_server_restarts(tmp_path: Path) -> None:
    with private_redis(tmp_path) as (port, procs):
        # A lease well beyond the outage: this test is about reconnecting, not about lost leases.
        url = f"redis://127.0.0.1:{port}/0?prefix=restart&lease=6"
        worker = start_worker(url, concurrency=4)
        try:
            with App("producer", broker=url) as app:
                before = [app.send_task("it.add", args=(i, 1)) for i in range(20)]
                assert [r.get(timeout=20) for r in before[:5]] == [1, 2, 3, 4, 5]
                more = [app.send_task("it.sleep", args=(0.5,)) for _ in range(4)]
                # Restart (the fsync-always AOF keeps the data, like a production server).
                procs[0].terminate()
                procs[0].wait(10)
                time.sleep(2.0)  # a real outage: the worker's calls fail and reconnect
                procs.append(start_redis(port, tmp_path))
                after = [app.send_task("it.add", args=(i, 100)) for i in range(20)]
                assert [r.get(timeout=30) for r in before] == [i + 1 for i in range(20)]
                assert [r.get(timeout=30) for r in after] == [i + 100 for i in range(20)]
                assert all(r.get(timeout=30) == worker.pid for r in more)
        finally:
            stop(worker, signal.SIGTERM)
