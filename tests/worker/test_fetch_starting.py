"""A worker asks a broker that can mark task records running (``link_records``) to do so
only when every message it takes will start at once: as many as its free slots, with
nothing buffered ahead and no task a limit could hold back."""

from __future__ import annotations

from collections.abc import Sequence

from taskflow import App
from taskflow.brokers.base import FetchResult
from taskflow.brokers.memory import MemoryBroker


class StartingBroker(MemoryBroker):
    """Links to any store, and records the ``start`` of each fetch (None: a plain fetch)."""

    def __init__(self) -> None:
        super().__init__()
        self.starts: list[int | None] = []
        self.linked: list[object | None] = []

    def link_records(self, records: object | None) -> bool:
        self.linked.append(records)
        return True

    async def fetch(self, queues: Sequence[str], max_messages: int, timeout: float) -> FetchResult:
        got = await super().fetch(queues, max_messages, timeout)
        if got:
            self.starts.append(None)
        return got

    async def fetch_starting(
        self, queues: Sequence[str], max_messages: int, timeout: float, start: int
    ) -> FetchResult:
        got = await super().fetch(queues, max_messages, timeout)
        if got:
            self.starts.append(start)
        return got


def test_a_fetch_asks_for_marks_up_to_the_free_slots_and_never_past_a_buffered_job() -> None:
    broker = StartingBroker()
    app = App("starting", broker=broker)

    @app.task(store_result=False)
    async def noop(i: int) -> None:
        return None

    try:
        noop.delay(0)
        app.worker(concurrency=4, prefetch_buffer=0).run_until_idle()
        assert broker.linked == [app.results.record_location()]
        assert broker.starts == [4]  # idle: all four slots free
        broker.starts.clear()
        for i in range(6):
            noop.delay(i)
        app.worker(concurrency=1, prefetch_buffer=4).run_until_idle()
        # The first fetch may mark one (the free slot; it takes five, so the broker marks
        # none). The next comes while jobs wait in the buffer: no marks asked for.
        assert broker.starts == [1, None]
    finally:
        app.close()


def test_a_task_with_a_rate_limit_turns_the_marks_off() -> None:
    broker = StartingBroker()
    app = App("starting", broker=broker)

    @app.task(store_result=False)
    def noop(i: int) -> None:
        return None

    @app.task(store_result=False, rate_limit="1000/s")
    def limited(i: int) -> None:
        return None

    try:
        noop.delay(0)
        app.worker(concurrency=4).run_until_idle()
        assert broker.starts == [None]
    finally:
        app.close()


def test_a_task_declared_again_with_a_rate_limit_turns_the_marks_off_for_a_running_worker() -> None:
    broker = StartingBroker()
    app = App("starting", broker=broker)

    def body(i: int) -> None:
        return None

    noop = app.task(name="starting.noop", store_result=False)(body)
    try:
        worker = app.worker(concurrency=4)
        noop.delay(0)
        worker.run_until_idle()
        assert broker.starts == [4]
        # The same function, declared again with a limit: as many tasks as before.
        app.task(name="starting.noop", store_result=False, rate_limit="1000/s")(body)
        broker.starts.clear()
        noop.delay(1)
        worker.run_until_idle()
        assert broker.starts == [None]
    finally:
        app.close()
