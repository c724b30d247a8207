"""A consumer that stops polling (a fetch that never returns) is noticed and restarted."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

import pytest

from taskflow import App
from taskflow.brokers.base import Delivery
from taskflow.brokers.memory import MemoryBroker


class WedgedOnceBroker(MemoryBroker):
    """The first fetch hangs for ever, like a client stuck on a half-open connection."""

    def __init__(self) -> None:
        super().__init__()
        self.wedged = 0

    async def fetch(
        self, queues: Sequence[str], max_messages: int, timeout: float
    ) -> list[Delivery]:
        if self.wedged == 0:
            self.wedged += 1
            await asyncio.Event().wait()
        return await super().fetch(queues, max_messages, timeout)


def test_a_fetch_that_never_returns_is_abandoned_and_the_worker_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    broker = WedgedOnceBroker()
    app = App("wedged", broker=broker)

    @app.task
    def ping() -> str:
        return "pong"

    try:
        result = ping.delay()
        with caplog.at_level(logging.ERROR, logger="taskflow.worker"):
            with app.worker(concurrency=1, poll_interval=0.05, stall_timeout=0.3):
                assert result.get(timeout=10) == "pong"
        assert broker.wedged == 1
        assert any("stopped polling" in r.getMessage() for r in caplog.records)
    finally:
        app.close()


class RecordingBroker(MemoryBroker):
    """Notes which task reads control messages and which task forgets its position."""

    def __init__(self) -> None:
        super().__init__()
        self.readers: set[object] = set()
        self.forgotten_by: list[object] = []

    async def control_messages(self, timeout: float) -> list[dict[str, object]]:
        self.readers.add(asyncio.current_task())
        return await super().control_messages(timeout)

    def forget_control_reader(self) -> None:
        self.forgotten_by.append(asyncio.current_task())
        super().forget_control_reader()


def test_a_stopping_worker_drops_its_control_position_from_the_reading_task() -> None:
    broker = RecordingBroker()
    app = App("reader", broker=broker)
    try:
        with app.worker(concurrency=1, poll_interval=0.05):
            pass
        assert broker.readers, "the worker never read the control channel"
        assert broker.forgotten_by and set(broker.forgotten_by) <= broker.readers
    finally:
        app.close()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        # With a fetch waiting 0 s the fetch loop held the event loop: 100% CPU while
        # idle, and a task sent never ran.
        ({"poll_interval": 0}, "poll_interval must be a positive number of seconds"),
        ({"poll_interval": -1}, "poll_interval must be a positive number of seconds"),
        ({"poll_interval": float("nan")}, "poll_interval must be a positive number"),
        ({"poll_interval": "1"}, "poll_interval must be a positive number of seconds"),
        # Shorter than a fetch's wait, every idle fetch was abandoned as stalled.
        ({"stall_timeout": 0.5}, r"stall_timeout must be seconds longer than poll_interval"),
        ({"stall_timeout": float("nan")}, "stall_timeout must be seconds longer"),
        ({"name": ""}, "worker name must be non-empty printable text"),
        ({"name": "w1\nforged"}, "worker name must be non-empty printable text"),
    ],
)
def test_a_worker_refuses_waits_and_names_it_could_not_work_with(
    options: dict[str, object], message: str
) -> None:
    with App("waits") as app:
        with pytest.raises(ValueError, match=message):
            app.worker(**options)
        worker = app.worker(queues=["a", "b", "a"], poll_interval=0.5, stall_timeout=2)
        assert (worker.queues, worker.stall_timeout) == (["a", "b"], 2.0)
        assert app.worker(poll_interval=4).stall_timeout == 20.0
