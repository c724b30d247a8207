"""Producers and ``taskflow worker`` processes sharing one SQLite file, with no server:
several workers on one file, a SIGKILLed worker's task delivered again, a producer
SIGKILLed in the middle of enqueueing batches leaving an intact file and whole batches."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from taskflow import App
from taskflow.worker.foreground import YOUNG_THRESHOLD
from tests.integration.redis_helpers import ROOT, stop, wait_until
from tests.integration.sqlite_helpers import start_worker

pytestmark = [pytest.mark.slow]

LEASE = 2.0


def runs_of(runs: Path, task_id: str) -> list[int]:
    """Pids of the processes that ran ``task_id``, in order."""
    if not runs.exists():
        return []
    lines = [line.split() for line in runs.read_text().splitlines()]
    return [int(pid) for tid, pid in lines if tid == task_id]


def test_a_producer_and_two_worker_processes_share_one_file(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/tasks.db?lease={LEASE}"
    worker = start_worker(url, tmp_path / "runs.txt", processes=2)
    try:
        with App("producer", broker=url) as app:
            results = [app.send_task("it.add", args=(i, 1)) for i in range(40)]
            assert [r.get(timeout=30) for r in results] == [i + 1 for i in range(40)]
        pids = {int(line.split()[1]) for line in (tmp_path / "runs.txt").read_text().splitlines()}
        assert worker.pid not in pids  # the supervisor's children ran them
        assert 1 <= len(pids) <= 2
    finally:
        stop(worker)
    assert worker.returncode == 0


def test_a_worker_process_serves_with_what_its_start_up_made_frozen(tmp_path: Path) -> None:
    # A full collection then walks only what was made since: the modules, the app and
    # its connections (tens of thousands of objects) are frozen before the first task.
    url = f"sqlite:///{tmp_path}/tasks.db?lease={LEASE}"
    worker = start_worker(url, tmp_path / "runs.txt")
    try:
        with App("producer", broker=url) as app:
            frozen = app.send_task("it.gc_frozen").get(timeout=30)
        assert isinstance(frozen, int) and frozen > 10_000
    finally:
        stop(worker)
    assert worker.returncode == 0


def _interpreter_thresholds() -> list[int]:
    shown = subprocess.run(
        [sys.executable, "-c", "import gc; print(*gc.get_threshold())"],
        capture_output=True,
        text=True,
        check=True,
    )
    return [int(n) for n in shown.stdout.split()]


@pytest.mark.parametrize(
    ("options", "young"),
    [([], YOUNG_THRESHOLD), (["--gc-threshold", "2500"], 2500), (["--gc-threshold", "0"], None)],
)
def test_worker_processes_serve_with_the_collector_threshold_asked_for(
    tmp_path: Path, options: list[str], young: int | None
) -> None:
    # Two processes: the supervisor passes the option on to the worker processes.
    url = f"sqlite:///{tmp_path}/tasks.db?lease={LEASE}"
    worker = start_worker(url, tmp_path / "runs.txt", processes=2, options=options)
    try:
        with App("producer", broker=url) as app:
            thresholds = app.send_task("it.gc_threshold").get(timeout=30)
    finally:
        stop(worker)
    assert worker.returncode == 0
    default = _interpreter_thresholds()
    # 0: the interpreter's own, as the app left them; else only the first one changes.
    assert thresholds == (default if young is None else [young, *default[1:]])


@pytest.mark.parametrize(
    ("options", "env", "module"),
    [
        ([], {}, "uvloop"),  # the default where uvloop is installed (it is a dependency)
        (["--loop", "asyncio"], {}, "asyncio"),
        ([], {"TASKFLOW_LOOP": "asyncio"}, "asyncio"),
        (["--loop", "uvloop"], {"TASKFLOW_LOOP": "asyncio"}, "uvloop"),  # the option wins
    ],
)
def test_worker_processes_run_their_bodies_on_the_event_loop_asked_for(
    tmp_path: Path, options: list[str], env: dict[str, str], module: str
) -> None:
    # Two processes: the supervisor passes the choice on to the worker processes.
    url = f"sqlite:///{tmp_path}/tasks.db?lease={LEASE}"
    worker = start_worker(url, tmp_path / "runs.txt", processes=2, options=options, env=env)
    try:
        with App("producer", broker=url) as app:
            kinds = [app.send_task("it.event_loop").get(timeout=30) for _ in range(4)]
    finally:
        stop(worker)
    assert worker.returncode == 0
    assert set(kinds) == {module}


def test_a_task_of_a_sigkilled_worker_is_delivered_again_to_another(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/tasks.db?lease={LEASE}"
    runs = tmp_path / "runs.txt"
    first = start_worker(url, runs)
    second = None
    try:
        with App("producer", broker=url) as app:
            result = app.send_task("it.sleep", args=(1.5,))
            wait_until(lambda: runs_of(runs, result.id), 20, "the first run to start")
            first.send_signal(signal.SIGKILL)
            first.wait(10)
            second = start_worker(url, runs)
            assert result.get(timeout=LEASE + 20) == second.pid
            assert runs_of(runs, result.id) == [first.pid, second.pid]
            assert result.info().attempts == 1
    finally:
        stop(first)
        if second is not None:
            stop(second)
    check_integrity(tmp_path / "tasks.db")


PRODUCER = """
import asyncio, sys, uuid
from taskflow.brokers.base import Message
from taskflow.brokers.sqlite import SqliteBroker

async def main():
    broker = SqliteBroker(sys.argv[1])
    await broker.connect()
    batch = 0
    while True:
        body = b"x" * 2000
        await broker.publish(
            [Message(uuid.uuid4().hex, "bulk", body) for _ in range(500)]
        )
        batch += 1
        if batch == 3:
            print("writing", flush=True)

asyncio.run(main())
"""


def check_integrity(path: Path) -> None:
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    conn.close()


def test_a_producer_killed_mid_batch_leaves_an_intact_file_and_only_whole_batches(
    tmp_path: Path,
) -> None:
    path = tmp_path / "tasks.db"
    producer = subprocess.Popen(
        [sys.executable, "-c", PRODUCER, f"sqlite:///{path}"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
    )
    try:
        assert producer.stdout is not None
        assert producer.stdout.readline() == b"writing\n"
        time.sleep(0.2)  # not synchronization: lets it get into later batches at random
        producer.send_signal(signal.SIGKILL)
        producer.wait(10)
    finally:
        if producer.poll() is None:
            producer.kill()
            producer.wait(10)
        if producer.stdout is not None:
            producer.stdout.close()
    check_integrity(path)
    with sqlite3.connect(path) as conn:
        (count,) = conn.execute("SELECT count(*) FROM messages WHERE queue = 'bulk'").fetchone()
    conn.close()
    assert count >= 1500
    assert count % 500 == 0
