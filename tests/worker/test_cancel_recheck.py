"""A cancel whose broadcast a worker missed still stops the task it runs.

A broadcast reaches the workers subscribed at that moment only: a worker that has not made
its subscription yet, or is making it again after a dropped connection, misses it. The
cancel wrote the task's record first, so the worker's periodic read of the records of the
tasks it runs (every ``RECHECK`` seconds of the app's clock) finds it.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from taskflow import App, TaskCancelled
from taskflow.brokers import MemoryBroker
from taskflow.clock import FakeClock
from taskflow.worker.control import RECHECK

WAIT = 10.0


def test_a_running_task_whose_cancel_broadcast_was_lost_stops_at_the_next_recheck() -> None:
    clock = FakeClock()
    broker = MemoryBroker(lease=3600.0, clock=clock)
    lost: list[dict[str, Any]] = []

    async def lose(command: dict[str, Any]) -> None:
        lost.append(command)

    broker.send_control = lose  # type: ignore[method-assign]
    started, stopped, finished = threading.Event(), threading.Event(), threading.Event()
    with App("recheck", broker=broker, clock=clock) as app:

        @app.task
        async def long_job() -> None:
            started.set()
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                stopped.set()
                raise
            finished.set()

        with app.worker(concurrency=2, poll_interval=0.01) as worker:
            sent = long_job.delay()
            assert started.wait(WAIT)
            assert sent.cancel()
            assert lost == [{"cmd": "cancel", "id": sent.id}]
            clock.advance(RECHECK - 0.5)
            assert worker.stats()["running"] == 1  # not due yet: nothing read
            clock.advance(0.5)
            assert stopped.wait(WAIT)
            with pytest.raises(TaskCancelled):
                sent.get(timeout=WAIT)
    assert not finished.is_set()
