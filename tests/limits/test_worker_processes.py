"""Cluster-wide limits across real ``taskflow worker`` processes, on Redis and on SQLite
(the tasks record what they see in the shared Redis)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from taskflow import App
from tests.conftest import require_service
from tests.integration.redis_helpers import ROOT, drop_prefix, stop, wait_until

APP_SPEC = "tests.limits.limits_app:app"
# Renewed every third of it: a worker whose process or machine stalls for two thirds of a
# lease loses its permits and messages, as it should; 3 s leaves room for the stalls
# of a loaded two-CPU machine.
LEASE = 3.0


@pytest.fixture(params=["redis", "sqlite"])
def broker_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    require_service("redis", "127.0.0.1", 6379)  # the tasks record in Redis either way
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'limits.db'}?lease={LEASE}"
        return
    prefix = f"tflim{uuid.uuid4().hex[:10]}"
    url = f"redis://127.0.0.1:6379/0?prefix={prefix}&lease={LEASE}"
    yield url
    drop_prefix(url, prefix)


@pytest.fixture
def record() -> Iterator[tuple[str, redis.Redis]]:
    """The key prefix the tasks record under, and a client to read it."""
    key = f"tflimrec{uuid.uuid4().hex[:10]}"
    client = redis.Redis.from_url("redis://127.0.0.1:6379/0")
    yield key, client
    for name in client.scan_iter(match=f"{key}:*"):
        client.delete(name)
    client.close()


@pytest.fixture
def workers() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        stop(proc)


def start_worker(
    url: str, key: str, concurrency: int, prefetch: int | None = None
) -> subprocess.Popen[bytes]:
    env = {**os.environ, "TASKFLOW_BROKER_URL": url, "LIMITS_KEY": key, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "taskflow.cli.main", "worker", "-A", APP_SPEC]
    command += ["-c", str(concurrency), "--loglevel", "warning"]
    if prefetch is not None:
        command += ["--prefetch", str(prefetch)]
    return subprocess.Popen(command, cwd=ROOT, env=env)


@pytest.fixture
def producer(broker_url: str) -> Iterator[App]:
    app = App("limits", broker=broker_url)
    yield app
    app.close()


def test_two_workers_share_one_cluster_rate(
    broker_url: str,
    record: tuple[str, redis.Redis],
    workers: list[subprocess.Popen[bytes]],
    producer: App,
) -> None:
    key, client = record
    for n in range(60):
        producer.send_task("limits.rated", args=(n,))
    workers += [start_worker(broker_url, key, 4), start_worker(broker_url, key, 4)]
    wait_until(lambda: client.llen(f"{key}:starts") == 60, 60, "60 rated tasks to start")
    rows = [row.split() for row in client.lrange(f"{key}:starts", 0, -1)]
    starts = sorted(float(at) for at, _ in rows)
    # 5/s shared, no burst: 59 gaps of 0.2 s. Per process it would take half that.
    assert starts[-1] - starts[0] >= 11.0
    # Evenly spaced all along: any 10 gaps take 2 s (less a little for a task whose start
    # in its thread was delayed on a busy machine).
    assert all(later - first >= 1.7 for first, later in zip(starts, starts[10:], strict=False))
    assert len({pid for _, pid in rows}) == 2  # both workers ran some of them


def test_cluster_concurrency_holds_across_three_workers(
    broker_url: str,
    record: tuple[str, redis.Redis],
    workers: list[subprocess.Popen[bytes]],
    producer: App,
) -> None:
    key, client = record
    for n in range(12):
        producer.send_task("limits.guarded", args=(n, 0.3))
    workers += [start_worker(broker_url, key, 3) for _ in range(3)]
    wait_until(lambda: client.llen(f"{key}:done") == 12, 60, "12 guarded tasks to finish")
    assert int(client.get(f"{key}:most") or 0) == 2  # the limit was reached, never passed


def test_a_killed_holders_permit_comes_back_within_its_lease(
    broker_url: str,
    record: tuple[str, redis.Redis],
    workers: list[subprocess.Popen[bytes]],
    producer: App,
) -> None:
    key, client = record

    def started(index: int) -> list[str]:
        row = client.lindex(f"{key}:single", index)
        assert row is not None
        return row.decode().split()  # n, delivery, pid, time

    # No prefetch: the worker running the holder takes nothing more, so the other one
    # receives the waiting task and keeps asking for the permit.
    workers += [start_worker(broker_url, key, 1, 0), start_worker(broker_url, key, 1, 0)]
    producer.send_task("limits.single", args=(0, 60.0))
    wait_until(lambda: client.llen(f"{key}:single") == 1, 30, "the holder to start")
    holder_pid = int(started(0)[2])
    producer.send_task("limits.single", args=(1, 0.0))
    # Renewed while it runs: the permit outlives its first lease.
    time.sleep(LEASE * 1.5)
    assert client.llen(f"{key}:single") == 1
    holder = next(p for p in workers if p.pid == holder_pid)
    holder.send_signal(signal.SIGKILL)
    holder.wait(10)
    killed_at = time.time()
    wait_until(lambda: client.llen(f"{key}:single") >= 2, 30, "the next task to start")
    n, _, pid, at = started(1)
    assert (n, int(pid)) == ("1", workers[1 - workers.index(holder)].pid)
    # Free once the lease from its last renewal (at most a third of a lease before the
    # kill) ran out, and found by the next ask (every 0.25 s).
    assert LEASE * 0.5 <= float(at) - killed_at <= LEASE + 1.0
