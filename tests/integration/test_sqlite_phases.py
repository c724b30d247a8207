"""Two phases on one SQLite file, each: pause the queue, enqueue, start fresh worker
processes, resume, wait for every task, stop the workers (the benchmark's pattern).

The producer process opens a second connection to the file (to pause and resume) while
its app's connection is open: opening a connection must not drop the POSIX locks the
process holds through the other one (it once read the file header with ``open()``, whose
``close()`` released them: the WAL was then checkpointed and deleted under the open
connection, and the file read as malformed, or the workers hung)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from taskflow import App
from taskflow.brokers.sqlite import SqliteBroker
from tests.integration.redis_helpers import stop, wait_until
from tests.integration.sqlite_helpers import start_worker

pytestmark = [pytest.mark.slow]

TASKS = 2000


def set_paused(url: str, queue: str, paused: bool) -> None:
    async def go() -> None:
        broker = SqliteBroker(url)
        await broker.connect()
        try:
            await (broker.pause(queue) if paused else broker.resume(queue))
        finally:
            await broker.close()

    asyncio.run(go())


def count_runs(runs: Path) -> int:
    return len(runs.read_text().splitlines()) if runs.exists() else 0


def test_a_second_paused_phase_with_fresh_workers_finishes(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/tasks.db"
    runs = tmp_path / "runs.txt"
    with App("producer", broker=url) as app:
        queue = app.default_queue
        for phase, processes in enumerate([1, 2], start=1):
            set_paused(url, queue, True)
            for i in range(TASKS):
                app.send_task("it.add", args=(i, 1))
            worker = start_worker(url, runs, processes, concurrency=8)
            try:
                set_paused(url, queue, False)
                done = phase * TASKS
                wait_until(
                    lambda done=done: count_runs(runs) >= done, 60, f"phase {phase} to finish"
                )
            finally:
                stop(worker)
    assert count_runs(runs) == 2 * TASKS
