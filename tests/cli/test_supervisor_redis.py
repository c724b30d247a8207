"""``taskflow worker -P 2`` sharing real work from Redis (the test process enqueues it)."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import pytest

from taskflow import App

from .helpers import alive, running

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")


def test_two_worker_processes_share_the_queue_and_stop_cleanly(
    tmp_path: Path, redis_url: str
) -> None:
    env = {"TASKFLOW_BROKER_URL": redis_url}
    with (
        running(
            ["worker", "-A", "redisapp", "-P", "2", "-c", "1"], tmp_path, env=env
        ) as supervisor,
        App("cli-client", broker=redis_url) as client,
    ):
        results = [client.send_task("cli.whoami", args=[0.3]) for _ in range(8)]

        ran_on = {result.get(timeout=15) for result in results}

        supervisor.signal(signal.SIGTERM)
        assert supervisor.wait(10) == 0
    assert len(ran_on) == 2 and supervisor.pid not in ran_on
    assert not [pid for pid in ran_on if alive(pid)]
    assert supervisor.stderr.count(" stopped\n") == 2
