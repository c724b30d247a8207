"""Chords across real ``taskflow worker`` processes on Redis: the body runs exactly once,
also when a worker is killed with SIGKILL in the middle of the header.

These are integration tests: real processes, real time. Keys live under a fresh prefix and
are deleted afterwards.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from taskflow import App, chord
from tests.conftest import require_service

pytestmark = [pytest.mark.integration, pytest.mark.slow]

APPS = Path(__file__).parent / "apps"
ROOT = Path(__file__).resolve().parents[2]
REDIS = "redis://127.0.0.1:6379/0"


class Cluster:
    """Worker processes plus a producer App, all on one Redis prefix."""

    def __init__(self, tmp: Path, lease: float, member_delay: float) -> None:
        tag = uuid.uuid4().hex[:10]
        self.prefix = f"tfcanvas{tag}"
        self.counters = f"tfcanvas-counters-{tag}"
        self.url = f"{REDIS}?prefix={self.prefix}&lease={lease}"
        self.tmp = tmp
        self.delay = member_delay
        self.procs: list[subprocess.Popen[bytes]] = []
        self.redis = redis.Redis.from_url(REDIS)
        self.app = App("canvas-producer", broker=self.url, results=self.url)

        # The producer's options travel in the envelope: retries=3 also gives a member
        # whose worker died the deliveries it needs to come back (not worker_lost).
        @self.app.task(name="canvas.double", retries=3)
        def double(x: int) -> int:  # runs in the worker processes only
            return 2 * x

        @self.app.task(name="canvas.tally", retries=3)
        def tally(values: list[int]) -> int:
            return sum(values)

        self.double, self.tally = double, tally

    def start_worker(self) -> subprocess.Popen[bytes]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TASKFLOW_")}
        env.update(
            CANVAS_URL=self.url,
            CANVAS_COUNTERS=self.counters,
            CANVAS_MEMBER_DELAY=str(self.delay),
            PYTHONPATH=os.pathsep.join([str(APPS), str(ROOT)]),
        )
        log = open(self.tmp / f"worker-{len(self.procs)}.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen(
            [sys.executable, "-m", "taskflow.cli.main", "worker", "-A", "chordapp", "-c", "4"],
            cwd=APPS,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
        )
        log.close()
        self.procs.append(proc)
        return proc

    def count(self, name: str) -> int:
        return int(self.redis.get(f"{self.counters}:{name}") or 0)

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        self.app.close()
        for key in self.redis.scan_iter(match=f"{{{self.prefix}}}:*", count=1000):
            self.redis.delete(key)
        self.redis.delete(f"{self.counters}:members", f"{self.counters}:body")
        self.redis.close()


@pytest.fixture
def cluster_factory(tmp_path: Path) -> Iterator[Callable[[float, float], Cluster]]:
    """``make(lease, member_delay)``: a cluster, stopped and cleaned up after the test."""
    require_service("redis", "127.0.0.1", 6379)
    made: list[Cluster] = []

    def make(lease: float, member_delay: float) -> Cluster:
        made.append(Cluster(tmp_path, lease, member_delay))
        return made[-1]

    yield make
    for cluster in made:
        cluster.close()


def test_three_worker_processes_run_a_500_member_chord_body_exactly_once(
    cluster_factory: Callable[[float, float], Cluster],
) -> None:
    cluster = cluster_factory(30.0, 0.0)  # lease, member delay
    for _ in range(3):
        cluster.start_worker()
    result = chord([cluster.double.s(i) for i in range(500)], cluster.tally.s()).apply_async()
    assert result.get(timeout=90) == sum(2 * i for i in range(500))
    assert cluster.count("body") == 1
    assert cluster.count("members") == 500


def test_a_chord_completes_exactly_once_when_a_worker_is_killed_mid_header(
    cluster_factory: Callable[[float, float], Cluster],
) -> None:
    cluster = cluster_factory(2.0, 0.02)  # short lease: the lost work returns soon
    victims = [cluster.start_worker() for _ in range(3)]
    result = chord([cluster.double.s(i) for i in range(300)], cluster.tally.s()).apply_async()
    deadline = time.monotonic() + 60
    while cluster.count("members") < 60:  # some of the header is done, most is not
        assert time.monotonic() < deadline, "workers never got going"
        time.sleep(0.01)
    victims[0].kill()  # SIGKILL: no shutdown, its leased messages come back after the lease
    victims[0].wait(5)
    assert result.get(timeout=90) == sum(2 * i for i in range(300))
    assert cluster.count("body") == 1
    assert cluster.count("members") >= 300  # members it was running ran again elsewhere
    assert all(s.value == "succeeded" for s in result.header.statuses().values())
