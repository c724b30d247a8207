"""``run_until_idle`` calls a worker idle only after a look at the broker that began once
every job it had released was settled: a retry written while the last look was being
answered still runs."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

from taskflow import App, TaskStatus
from taskflow.brokers.base import Delivery, FetchResult
from taskflow.brokers.memory import MemoryBroker, MemoryDelivery


class OvertakenBroker(MemoryBroker):
    """A network broker's order of events, made certain: a task's retry is written only
    after a look taken while it was settling found nothing, and that look is answered only
    after the job was released (a look on one connection answered after the settle that
    was sent on another)."""

    def __init__(self) -> None:
        super().__init__()
        self.held: Callable[[], int] = lambda: 0
        self.room: Callable[[], Awaitable[None]] | None = None  # the worker's Window.room
        self.looked = asyncio.Event()
        self.overtaken = 0

    def _take(self, queues: Sequence[str], limit: int) -> list[Delivery]:
        settle, lease = self._settle_delivery, self.lease
        return [LateRetry(self, settle, lease, s) for s in self._state.take(queues, limit)]

    async def fetch(self, queues: Sequence[str], max_messages: int, timeout: float) -> FetchResult:
        holding = self.held() > 0
        got = await super().fetch(queues, max_messages, timeout)
        if not got and holding and not self.looked.is_set():
            self.looked.set()
            assert self.room is not None
            while self.held():  # the window wakes its room's waiter at each release
                await asyncio.wait_for(self.room(), 5.0)
            self.overtaken += 1
        return got


class LateRetry(MemoryDelivery):
    """Writes its retry once a look has found nothing (see :class:`OvertakenBroker`)."""

    __slots__ = ("_broker",)

    def __init__(self, broker: OvertakenBroker, *args: object) -> None:
        super().__init__(*args)  # type: ignore[arg-type]
        self._broker = broker

    async def retry(self, body: bytes, delay: float, *, max_deliveries: int = 1) -> bool:
        # Bounded: if no look came while the task settled, the test fails on ``overtaken``.
        await asyncio.wait_for(self._broker.looked.wait(), 5.0)
        return await super().retry(body, delay, max_deliveries=max_deliveries)


def test_a_retry_written_while_the_last_look_was_answered_still_runs() -> None:
    broker = OvertakenBroker()
    with App("overtaken", broker=broker) as app:
        runs: list[int] = []

        @app.task(retries=1, retry_backoff=0.0)
        async def flaky() -> int:
            runs.append(len(runs) + 1)
            if len(runs) == 1:
                raise ValueError("the first run fails")
            return len(runs)

        result = flaky.delay()
        worker = app.worker(concurrency=1)
        broker.held = lambda: len(worker.window)
        broker.room = worker.window.room
        worker.run_until_idle()
        assert broker.overtaken == 1  # the look was answered after the retry was written
        assert runs == [1, 2]
        assert result.status is TaskStatus.SUCCEEDED
        assert result.get(timeout=1) == 2
