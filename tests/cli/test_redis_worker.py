"""``taskflow worker`` against real Redis servers: a hard stop that ends the process, a
body that calls ``sys.exit()``, and a worker that starts before its broker."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from taskflow import App
from taskflow.errors import TaskFailed
from tests.integration.redis_helpers import drop_prefix, free_port, shared_url

from .helpers import pids, run, running, wait_for

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")


@contextmanager
def redis_server(port: int, password: str, *options: str) -> Iterator[None]:
    """A private redis-server on ``port`` that requires ``password``, stopped afterwards;
    ``options``: more of its command line."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed")
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--save", "", "--appendonly", "no"]
        + ["--daemonize", "no", "--requirepass", password, *options],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.mark.slow
def test_a_second_sigint_ends_the_process_while_a_sync_body_blocks(
    tmp_path: Path, redis_url: str
) -> None:
    url = f"{redis_url}&lease=2"
    blocking = {"TASKFLOW_BROKER_URL": url, "TASKFLOW_TEST_BLOCK": "1"}
    with (
        App("cli-client", broker=url) as client,
        running(["worker", "-A", "redisapp", "-c", "1"], tmp_path, env=blocking) as first,
    ):
        result = client.send_task("cli.hold")
        wait_for(lambda: pids(tmp_path, "started") == {first.pid}, 10, "the blocking body")

        first.signal(signal.SIGINT)
        wait_for(lambda: "stopping gracefully (SIGINT)" in first.stderr, 5, "the graceful stop")
        first.signal(signal.SIGINT)
        asked = time.monotonic()

        # The body sleeps in C for a minute; the process ends anyway, within seconds.
        assert first.wait(5) == 0
        assert time.monotonic() - asked < 5
        with running(
            ["worker", "-A", "redisapp", "-c", "1"], tmp_path, env={"TASKFLOW_BROKER_URL": url}
        ) as second:
            # Its message was not handed back while the body could still run: it comes
            # back when the lease runs out, and the next worker runs it.
            assert result.get(timeout=15) == second.pid
            second.signal(signal.SIGTERM)
            assert second.wait(10) == 0
        assert "delivered again" in second.stderr
    assert "WARNING taskflow.cli: stopping now (SIGINT)" in first.stderr
    assert "still running after the stop" in first.stderr
    assert "Traceback" not in first.stderr


@pytest.mark.slow
@pytest.mark.parametrize("pool", ["threads", "processes"])
def test_a_body_that_calls_sys_exit_fails_its_task_and_the_worker_serves_on(
    tmp_path: Path, pool: str
) -> None:
    url, prefix = shared_url(lease=30)
    command = ["worker", "-A", "redisapp", "-c", "1", "--pool", pool]
    try:
        with (
            App("exit-client", broker=url) as client,
            running(command, tmp_path, env={"TASKFLOW_BROKER_URL": url}) as worker,
        ):
            failed = client.send_task("cli.quits", args=[2])
            with pytest.raises(TaskFailed) as caught:
                failed.get(timeout=20)
            served = client.send_task("cli.whoami", args=[0]).get(timeout=20)
            worker.signal(signal.SIGTERM)
            assert worker.wait(10) == 0, worker.stderr
            attempts = failed.info().attempts
    finally:
        drop_prefix(url, prefix)
    assert (caught.value.exc_type, caught.value.message) == ("SystemExit", "2")
    assert attempts == 1  # not retried: SystemExit is not an Exception of retry_on
    assert served != worker.pid if pool == "processes" else served == worker.pid


def test_a_worker_started_before_its_broker_waits_for_it(tmp_path: Path) -> None:
    port = free_port()
    url = f"redis://:hunter2@127.0.0.1:{port}/0?prefix=tfcliconnect"
    env = {"TASKFLOW_BROKER_URL": url}
    with running(["worker", "-A", "redisapp", "-c", "1"], tmp_path, env=env) as worker:
        masked = f"redis://:***@127.0.0.1:{port}/0?prefix=tfcliconnect"
        wait_for(lambda: f"cannot connect to {masked}" in worker.stderr, 15, "a retry")
        assert worker.proc.poll() is None

        with redis_server(port, "hunter2"), App("cli-client", broker=url) as client:
            assert client.send_task("cli.whoami", args=[0.0]).get(timeout=20) == worker.pid
            worker.signal(signal.SIGTERM)
            assert worker.wait(10) == 0
    assert "WARNING taskflow.cli: cannot connect to" in worker.stderr
    assert "hunter2" not in worker.stderr


def test_a_worker_on_a_server_that_evicts_keys_says_so_when_it_starts(tmp_path: Path) -> None:
    port = free_port()
    url = f"redis://:hunter2@127.0.0.1:{port}/0?prefix=tfclievict"
    env = {"TASKFLOW_BROKER_URL": url}
    with (
        redis_server(port, "hunter2", "--maxmemory", "64mb", "--maxmemory-policy", "allkeys-lru"),
        running(["worker", "-A", "redisapp", "-c", "1"], tmp_path, env=env) as worker,
    ):
        wait_for(lambda: "maxmemory-policy" in worker.stderr, 15, "the warning")
        with App("cli-client", broker=url) as client:
            # The worker serves as before: the warning stops nothing.
            assert client.send_task("cli.whoami", args=[0.0]).get(timeout=20) == worker.pid
        worker.signal(signal.SIGTERM)
        assert worker.wait(10) == 0
    masked = f"redis://:***@127.0.0.1:{port}/0?prefix=tfclievict"
    assert (
        f"WARNING taskflow.redis: redis broker at {masked}: the server's maxmemory-policy is "
        "allkeys-lru: once it holds maxmemory (67108864 bytes) it deletes keys"
    ) in worker.stderr
    assert worker.stderr.count("maxmemory-policy is allkeys-lru") == 1
    assert "hunter2" not in worker.stderr


def test_a_broker_that_stays_away_ends_the_worker_with_status_1(tmp_path: Path) -> None:
    port = free_port()
    env = {"TASKFLOW_BROKER_URL": f"redis://:hunter2@127.0.0.1:{port}/0"}
    began = time.monotonic()

    result = run(["worker", "-A", "redisapp", "--connect-timeout", "2"], tmp_path, env=env)

    took = time.monotonic() - began
    assert result.returncode == 1
    assert 2 <= took < 6
    assert result.stderr.splitlines()[-1].startswith(
        f"taskflow: error: cannot connect to redis://:***@127.0.0.1:{port}/0: gave up after 2s"
    )
    assert "hunter2" not in result.stderr
    assert "Traceback" not in result.stderr


def test_beat_takes_a_connect_timeout_too(tmp_path: Path) -> None:
    port = free_port()
    env = {"TASKFLOW_BROKER_URL": f"redis://:hunter2@127.0.0.1:{port}/0"}

    result = run(["beat", "-A", "redisapp", "--connect-timeout", "0.5"], tmp_path, env=env)

    assert result.returncode == 1
    assert result.stderr.splitlines()[-1].startswith(
        f"taskflow: error: cannot connect to redis://:***@127.0.0.1:{port}/0: gave up after 0.5s"
    )
    assert "hunter2" not in result.stderr
