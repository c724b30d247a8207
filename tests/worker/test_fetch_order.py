"""Jobs started from a fetch take their first step before the fetcher asks the broker
again: the next fetch most often only waits, and must not delay them."""

from __future__ import annotations

from collections.abc import Sequence

from taskflow import App
from taskflow.brokers.base import FetchResult
from taskflow.brokers.memory import MemoryBroker


class RecordingBroker(MemoryBroker):
    """Records each fetch in ``events``, beside what the task bodies record."""

    def __init__(self, events: list[str]) -> None:
        super().__init__()
        self.events = events

    async def fetch(self, queues: Sequence[str], max_messages: int, timeout: float) -> FetchResult:
        self.events.append("fetch")
        got = await super().fetch(queues, max_messages, timeout)
        if got:
            self.events.append(f"got {len(got)}")
        return got


def test_jobs_of_a_fetch_start_before_the_next_fetch() -> None:
    events: list[str] = []
    app = App("order", broker=RecordingBroker(events))

    @app.task(store_result=False)
    async def mark(i: int) -> None:
        events.append(f"body {i}")

    try:
        for i in range(2):
            mark.delay(i)
        app.worker(concurrency=4).run_until_idle()
        first = events.index("got 2")
        assert events[first + 1 : first + 4] == ["body 0", "body 1", "fetch"], events
    finally:
        app.close()
