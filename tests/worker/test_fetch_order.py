"""Jobs started from a fetch take their first step before the fetcher asks the broker
again: the next fetch most often only waits, and must not delay them. A sync body handed
to an idle thread has started before that fetch too."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

import pytest

from taskflow import App
from taskflow.brokers.base import FetchResult
from taskflow.brokers.memory import MemoryBroker
from taskflow.worker import bodies


class RecordingBroker(MemoryBroker):
    """Records each fetch in ``events``, beside what the task bodies record."""

    def __init__(self, events: list[str]) -> None:
        super().__init__()
        self.events = events
        self.changed = threading.Condition()

    def note(self, event: str) -> None:
        """Append ``event`` (from the loop or a body's thread) and wake :meth:`wait_for`."""
        with self.changed:
            self.events.append(event)
            self.changed.notify_all()

    def wait_for(self, events: list[str], timeout: float = 10.0) -> None:
        """Until ``events`` were noted one after another (anywhere in the record)."""

        def seen() -> bool:
            n = len(events)
            return any(self.events[i : i + n] == events for i in range(len(self.events)))

        self.wait_until(seen, timeout)

    def wait_until(self, done: Callable[[], bool], timeout: float = 10.0) -> None:
        """Until ``done()`` holds of the record."""
        with self.changed:
            assert self.changed.wait_for(done, timeout), self.events

    async def fetch(self, queues: Sequence[str], max_messages: int, timeout: float) -> FetchResult:
        self.note("fetch")
        got = await super().fetch(queues, max_messages, timeout)
        if got:
            self.note(f"got {len(got)}")
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


def test_a_sync_body_handed_to_an_idle_thread_starts_before_the_next_fetch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The hand-over is made where the loop's thread runs on one CPU (BodyThreads): as here.
    monkeypatch.setattr(bodies, "_on_one_cpu", lambda: True)
    # The loop waits this long at most for the thread (0.5 ms in production): what is
    # tested is that it waits, not how fast a loaded machine wakes a thread.
    monkeypatch.setattr(bodies.BodyThreads, "handoff_wait", 10.0)
    events: list[str] = []
    broker = RecordingBroker(events)
    app = App("order-sync", broker=broker)

    @app.task(store_result=False)
    def mark(i: int) -> None:
        broker.note(f"body {i}")

    try:
        with app.worker(concurrency=4):
            mark.delay(0)  # starts the pool's first thread, idle afterwards
            broker.wait_for(["body 0"])
            broker.wait_until(lambda: events.count("fetch") == 2)  # the next one waits
            start = len(events)
            mark.delay(1)  # one message to an idle worker with an idle thread
            broker.wait_for(["got 1", "body 1", "fetch"])
            assert events[start:] == ["got 1", "body 1", "fetch"], events
    finally:
        app.close()
