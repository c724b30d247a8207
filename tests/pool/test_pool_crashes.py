"""The process pool against real Redis: a child killed from outside, and a hard stop of
``taskflow worker --pool processes`` while a body blocks in C."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest

from taskflow import App
from tests.cli.helpers import alive, pids, running, wait_for
from tests.integration.redis_helpers import drop_prefix, shared_url

from .conftest import APP_PATH, children
from .poolapp import declare

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")


def test_a_child_killed_from_outside_is_replaced_and_its_task_delivered_again(
    tmp_path: Path,
) -> None:
    url, prefix = shared_url(lease=2)
    try:
        with App("pool-crash", broker=url) as app:
            tasks = declare(app)
            with app.worker(concurrency=1, pool="processes", app_path=APP_PATH) as worker:
                result = tasks["block_once"].delay(str(tmp_path))
                wait_for(lambda: bool(pids(tmp_path, "started")), 10, "the first run")
                (first,) = pids(tmp_path, "started")
                os.kill(first, signal.SIGKILL)

                pid, attempt, delivery = result.get(timeout=20)
                replacements = [p.pid for p in children()]

            assert result.info().attempts == 1
            # Stopped: one attempt, ended once (the delivery lost with the child uncounted).
            assert worker.stats()["processed"] == 1
    finally:
        drop_prefix(url, prefix)
    # Delivered again as the same attempt, one lost delivery counted, run to completion
    # once, in the child that replaced the killed one.
    assert (attempt, delivery) == (1, 2)
    assert pid != first
    assert replacements == [pid]
    assert pids(tmp_path, "started") == {first, pid}
    assert pids(tmp_path, "finished") == {pid}


@pytest.mark.slow
def test_a_second_sigint_ends_a_process_pool_worker_and_its_blocked_child(
    tmp_path: Path,
) -> None:
    # A long lease: the message must come back because the stop handed it back once the
    # child was gone, not because its lease ran out.
    url, prefix = shared_url(lease=60)
    blocking = {"TASKFLOW_BROKER_URL": url, "TASKFLOW_TEST_BLOCK": "1"}
    command = ["worker", "-A", "redisapp", "-c", "1", "--pool", "processes"]
    try:
        with (
            App("pool-cli-client", broker=url) as client,
            running(command, tmp_path, env=blocking) as first,
        ):
            result = client.send_task("cli.hold")
            wait_for(lambda: bool(pids(tmp_path, "started")), 15, "the blocking body")
            (child,) = pids(tmp_path, "started")
            assert child != first.pid  # the body runs in a child of the worker

            first.signal(signal.SIGINT)
            wait_for(lambda: "stopping gracefully (SIGINT)" in first.stderr, 5, "the graceful stop")
            first.signal(signal.SIGINT)
            asked = time.monotonic()

            assert first.wait(5) == 0, first.stderr
            assert time.monotonic() - asked < 3
            assert not alive(child)
            with running(
                ["worker", "-A", "redisapp", "-c", "1"], tmp_path, env={"TASKFLOW_BROKER_URL": url}
            ) as second:
                assert result.get(timeout=15) == second.pid, first.stderr
                second.signal(signal.SIGTERM)
                assert second.wait(10) == 0
    finally:
        drop_prefix(url, prefix)
    assert pids(tmp_path, "started") == {child, second.pid}
    assert "WARNING taskflow.cli: stopping now (SIGINT)" in first.stderr
    assert "Traceback" not in first.stderr
