"""``taskflow worker -P 2`` sharing real work from Redis (the test process enqueues it)."""

from __future__ import annotations

import signal
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from taskflow import App
from tests.conftest import require_service

from .helpers import alive, running

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")


@pytest.fixture
def redis_url() -> Iterator[str]:
    """The shared server with a fresh key prefix, whose keys are deleted afterwards."""
    require_service("redis", "127.0.0.1", 6379)
    import redis

    prefix = f"tfcli{uuid.uuid4().hex[:10]}"
    yield f"redis://127.0.0.1:6379/0?prefix={prefix}"
    client = redis.Redis(port=6379)
    try:
        for pattern in (f"{{{prefix}}}:*", f"{prefix}:*"):
            for key in client.scan_iter(match=pattern, count=1000):
                client.delete(key)
    finally:
        client.close()


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
