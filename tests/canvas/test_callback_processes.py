"""``link``/``link_error`` across real ``taskflow worker`` processes on Redis: each callback is
sent exactly once even when the worker is killed (SIGKILL) after storing the task's outcome
and before sending the callback; the redelivery sends it.

Integration tests: real processes, real time. Keys live under a fresh prefix and are deleted
afterwards.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from taskflow import App, TaskFailed
from tests.conftest import require_service

pytestmark = [pytest.mark.integration, pytest.mark.slow]

APPS = Path(__file__).parent / "apps"
ROOT = Path(__file__).resolve().parents[2]
REDIS = "redis://127.0.0.1:6379/0"


class Workers:
    """Worker processes of ``apps/linkapp.py`` plus a producer App on one Redis prefix."""

    def __init__(self, tmp: Path) -> None:
        tag = uuid.uuid4().hex[:10]
        self.prefix = f"tflink{tag}"
        self.counters = f"tflink-counters-{tag}"
        self.url = f"{REDIS}?prefix={self.prefix}&lease=2"
        self.tmp = tmp
        self.procs: list[subprocess.Popen[bytes]] = []
        self.redis = redis.Redis.from_url(REDIS)
        self.app = App("link-producer", broker=self.url, results=self.url)

        @self.app.task(name="link.source")
        def source(x: int) -> int:  # runs in the worker processes only
            return 2 * x

        @self.app.task(name="link.broken")
        def broken(x: int) -> int:
            raise ValueError(x)

        @self.app.task(name="link.callback")
        def callback(value: object, tag: str) -> None:
            return None

        self.source, self.broken, self.callback = source, broken, callback

    def start(self) -> subprocess.Popen[bytes]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TASKFLOW_")}
        env.update(
            LINK_URL=self.url,
            LINK_COUNTERS=self.counters,
            PYTHONPATH=os.pathsep.join([str(APPS), str(ROOT)]),
        )
        log = open(self.tmp / f"worker-{len(self.procs)}.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen(
            [sys.executable, "-m", "taskflow.cli.main", "worker", "-A", "linkapp", "-c", "4"],
            cwd=APPS,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
        )
        log.close()
        self.procs.append(proc)
        return proc

    def keep_one_running(self) -> None:
        """Start a worker when every earlier one was killed by the seam."""
        if all(p.poll() is not None for p in self.procs):
            self.start()

    def runs(self, tag: str) -> int:
        return int(self.redis.get(f"{self.counters}:runs:{tag}") or 0)

    def sent(self, tag: str) -> int:
        """How many callbacks with ``tag`` were sent (distinct task ids that ran)."""
        return int(self.redis.scard(f"{self.counters}:sent:{tag}"))

    def values(self, tag: str) -> list[str]:
        return [v.decode() for v in self.redis.lrange(f"{self.counters}:values:{tag}", 0, -1)]

    def died(self, task_id: str) -> bool:
        return bool(self.redis.exists(f"{self.counters}:died:{task_id}"))

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
        for key in self.redis.scan_iter(match=f"{self.counters}:*", count=1000):
            self.redis.delete(key)
        self.redis.close()


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Workers]:
    require_service("redis", "127.0.0.1", 6379)
    made = Workers(tmp_path)
    yield made
    made.close()


def test_link_and_link_error_are_sent_once_when_the_worker_dies_after_the_result(
    workers: Workers,
) -> None:
    ok = workers.source.apply_async((21,), link=workers.callback.s("ok"))
    bad = workers.broken.apply_async(
        (1,), link=workers.callback.s("never"), link_error=workers.callback.s("err")
    )
    workers.start()
    deadline = time.monotonic() + 90
    while workers.runs("ok") < 1 or workers.runs("err") < 1:
        assert time.monotonic() < deadline, "the callbacks were never sent"
        workers.keep_one_running()
        time.sleep(0.05)  # polling real processes (an integration test)
    assert ok.get(timeout=30) == 42
    with pytest.raises(TaskFailed):
        bad.get(timeout=30)
    # Both workers that stored an outcome died before any callback went out.
    assert workers.died(ok.id) and workers.died(bad.id)
    assert sum(1 for p in workers.procs if p.poll() == -9) >= 1
    # Give a duplicate time to show up: one more linked task (whose worker dies once too).
    probe = workers.source.apply_async((1,), link=workers.callback.s("probe"))
    while workers.runs("probe") < 1:
        assert time.monotonic() < deadline, "the probe's callback was never sent"
        workers.keep_one_running()
        time.sleep(0.05)
    assert probe.get(timeout=30) == 2
    # Each callback was sent once. A worker killed by the seam while it ran a callback
    # it had already taken runs that same callback again elsewhere (delivery is at least
    # once), so the runs of one callback may be more than one, each with its value.
    assert workers.sent("ok") == 1 and set(workers.values("ok")) == {"42"}
    assert workers.sent("err") == 1 and set(workers.values("err")) == {bad.id}
    assert workers.runs("never") == 0
