"""A worker holds at most its free slots plus the prefetch buffer, and asks in batches."""

from __future__ import annotations

import asyncio
import concurrent.futures
import queue
import threading
import uuid
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from taskflow import App
from taskflow.brokers.base import Capabilities, Delivery, FetchResult
from taskflow.brokers.memory import MemoryBroker
from taskflow.worker.fetcher import Window
from tests.conftest import require_service
from tests.integration.nats_helpers import drop_prefix


class AskingBroker(MemoryBroker):
    """Records how many messages each fetch asked for."""

    def __init__(self) -> None:
        super().__init__()
        self.asked: list[int] = []

    async def fetch(self, queues: Sequence[str], max_messages: int, timeout: float) -> FetchResult:
        self.asked.append(max_messages)
        return await super().fetch(queues, max_messages, timeout)


def _held(app: App, sent: int, concurrency: int, **options: int) -> dict[str, int]:
    """The broker's depth while a worker runs ``concurrency`` blocked bodies out of
    ``sent``; every task then finishes."""
    release = threading.Event()
    started: queue.Queue[str] = queue.Queue()

    @app.task(on_start=lambda event: started.put(event.task_id))
    def hold() -> None:
        release.wait(10)

    try:
        results = [hold.delay() for _ in range(sent)]
        with app.worker(concurrency=concurrency, **options):
            for _ in range(concurrency):
                started.get(timeout=5)
            depth = app.kernel.call(app.broker.depth("default"))  # type: ignore[attr-defined]
            release.set()
            for r in results:
                r.get(timeout=10)
        return depth
    finally:
        release.set()


def test_a_busy_worker_holds_no_more_than_its_slots_plus_the_buffer() -> None:
    broker = AskingBroker()
    app = App("window", broker=broker)
    try:
        depth = _held(app, sent=10, concurrency=2, prefetch_buffer=1)
    finally:
        app.close()
    assert depth["inflight"] == 3  # two running, one waiting in the buffer
    assert depth["ready"] == 7
    assert max(broker.asked) <= 3
    # Asked in batches: far fewer fetches than tasks once the buffer covers free slots.
    assert len([n for n in broker.asked if n > 0]) < 10


def _credits(
    app: App, running: int, buffered: int, concurrency: int = 8, prefetch_buffer: int = 4
) -> int:
    worker = app.worker(concurrency=concurrency, prefetch_buffer=prefetch_buffer)
    # What the window holds counts, whether it runs or waits in the buffer.
    worker.window.jobs = {f"h{i}": None for i in range(running + buffered)}  # type: ignore[misc]
    return worker.window.credits()


def test_the_fetcher_fills_idle_slots_at_once_and_otherwise_asks_in_batches(app: App) -> None:
    # concurrency 8 + buffer 4: a window of 12 messages
    assert _credits(app, running=0, buffered=0) == 12  # idle: the whole window
    assert _credits(app, running=7, buffered=0) == 5  # a slot would sit idle: ask now
    assert _credits(app, running=2, buffered=4) == 6  # free slots exceed the buffer
    assert _credits(app, running=8, buffered=1) == 0  # the buffer covers the free slots
    assert _credits(app, running=8, buffered=4) == 0
    # A buffer larger than the slots (2 + 8): refill only once half the window is free.
    assert _credits(app, 2, 3, concurrency=2, prefetch_buffer=8) == 5
    assert _credits(app, 2, 4, concurrency=2, prefetch_buffer=8) == 0


class SlowAck(Delivery):
    """A delivery whose ack waits until the test opens acks (a backend slow to answer)."""

    def __init__(self, inner: Delivery, broker: SlowSettleBroker) -> None:
        super().__init__(inner.id, inner.queue, inner.body, inner.priority, inner.delivery_count)
        self.inner = inner
        self.broker = broker

    @property
    def lease(self) -> float | None:
        return self.inner.lease

    async def ack(self) -> bool:
        self.broker.pending_acks += 1
        await asyncio.wrap_future(self.broker.acks_open)
        self.broker.pending_acks -= 1
        return await self.inner.ack()

    async def nack(self, *, requeue: bool = True) -> bool:
        return await self.inner.nack(requeue=requeue)

    async def retry(self, body: bytes, delay: float, *, max_deliveries: int = 1) -> bool:
        return await self.inner.retry(body, delay, max_deliveries=max_deliveries)

    async def touch(self) -> bool:
        return await self.inner.touch()

    async def dead_letter(self, reason: str, error: str | None = None) -> bool:
        return await self.inner.dead_letter(reason, error)


class SlowSettleBroker(MemoryBroker):
    """Acks wait until the test opens them; notes a fetch made while three are pending."""

    def __init__(self) -> None:
        super().__init__()
        # Set from the test's thread; each ack awaits it on the worker's loop.
        self.acks_open: concurrent.futures.Future[None] = concurrent.futures.Future()
        self.pending_acks = 0
        self.fetched_while_settling = threading.Event()

    def open_acks(self) -> None:
        """Let every ack, waiting or to come, through."""
        if not self.acks_open.done():
            self.acks_open.set_result(None)

    async def fetch(self, queues: Sequence[str], max_messages: int, timeout: float) -> FetchResult:
        if self.pending_acks >= 3 and max_messages > 0:
            self.fetched_while_settling.set()
        got = await super().fetch(queues, max_messages, timeout)
        return FetchResult([SlowAck(d, self) for d in got], got.lost)


def test_the_next_batch_is_fetched_while_the_previous_one_settles() -> None:
    broker = SlowSettleBroker()
    app = App("settling", broker=broker)

    @app.task(store_result=False)
    async def noop() -> None:
        pass

    try:
        for _ in range(12):
            noop.delay()
        # A window of 3: three bodies return at once and their acks hang; the worker
        # still asks for the next messages (before, it waited for the acks to land).
        with app.worker(concurrency=2, prefetch_buffer=1):
            try:
                assert broker.fetched_while_settling.wait(10)
            finally:
                broker.open_acks()
    finally:
        broker.open_acks()
        app.close()


def test_a_worker_on_sqlite_buffers_twice_its_slots_by_default(tmp_path: Path) -> None:
    # A fetch on SQLite is a write transaction queued behind the acks: the default buffer
    # (Capabilities.fetch_buffer) covers it, so the slots do not run dry meanwhile.
    app = App("window-sqlite", broker=f"sqlite:///{tmp_path}/q.db", results="memory://")
    try:
        depth = _held(app, sent=12, concurrency=2)
    finally:
        app.close()
    assert depth["inflight"] == 2 + 4  # two running, twice as many in the buffer
    assert depth["ready"] == 12 - 6


def test_a_worker_elsewhere_buffers_half_its_slots_by_default() -> None:
    app = App("window-memory")
    try:
        depth = _held(app, sent=12, concurrency=4)
    finally:
        app.close()
    assert depth["inflight"] == 4 + 2
    assert depth["ready"] == 12 - 6


def test_an_explicit_buffer_overrides_the_brokers_default(tmp_path: Path) -> None:
    app = App("window-explicit", broker=f"sqlite:///{tmp_path}/q.db", results="memory://")
    try:
        assert app.worker(concurrency=8).prefetch_buffer == 16
        assert app.worker(concurrency=8, prefetch_buffer=0).prefetch_buffer == 0
        assert App("window-default").worker(concurrency=8).prefetch_buffer == 4
        assert App("window-one").worker(concurrency=1).prefetch_buffer == 1  # at least 1
    finally:
        app.close()


def _finish(window: Window, ran: float, count: int = 1) -> None:
    """``count`` held jobs whose bodies ran ``ran`` seconds finish and are settled."""
    for i in range(count):
        job: Any = SimpleNamespace(
            envelope=SimpleNamespace(id=f"j{i}-{ran}"), settling=False, settled=False, delivery=None
        )
        window.hold(job)
        window.finished(job, ran)
        window.release(job)


@pytest.mark.parametrize("pool", ["threads", "processes"])
def test_a_worker_buffers_deeper_while_its_bodies_run_short(pool: str) -> None:
    with App("window-short") as app:
        worker = app.worker(concurrency=2, pool=pool)
        window = worker.window
        assert worker.prefetch_buffer == 1  # the default until bodies are known to be short
        assert window.short_buffer == 4
        assert window.size == 2 + 1

        _finish(window, ran=0.002)
        assert window.size == 2 + 4  # short bodies: a fetch brings a batch
        # Two running, one buffered: the fixed window (3) would ask for nothing; the
        # deeper one asks for three once half of it is free.
        window.jobs = {f"h{i}": None for i in range(3)}  # type: ignore[misc]
        assert window.credits() == 3
        window.jobs = {}

        _finish(window, ran=5.0)
        assert window.size == 2 + 1  # a long body: nothing more is held behind it
        _finish(window, ran=0.001, count=3)
        assert window.size == 2 + 1  # one short body does not undo a long one at once
        _finish(window, ran=0.001, count=10)
        assert window.size == 2 + 4


def test_the_deeper_buffer_is_only_for_the_default_buffer() -> None:
    with App("window-fixed") as app:
        for worker in (
            app.worker(concurrency=2, prefetch_buffer=1),
            app.worker(concurrency=2, pool="processes", prefetch_buffer=1),
        ):
            assert worker.window.short_buffer is None
            _finish(worker.window, ran=0.001, count=5)
            assert worker.window.size == 2 + 1


class SlowFetchBroker(MemoryBroker):
    """A broker whose fetch takes milliseconds: it asks for a deeper short buffer."""

    capabilities = Capabilities(short_fetch_buffer=64)


@pytest.mark.parametrize(("concurrency", "short"), [(2, 64), (8, 64), (40, 80)])
def test_a_broker_whose_fetch_is_slow_gets_a_deeper_short_buffer(
    concurrency: int, short: int
) -> None:
    # At least the broker's depth while bodies run short, and twice the slots if that is
    # more; the buffer before bodies are known to be short is the usual one.
    with App("window-slow-fetch", broker=SlowFetchBroker()) as app:
        worker = app.worker(concurrency=concurrency)
        window = worker.window
        assert worker.prefetch_buffer == max(1, concurrency // 2)
        assert window.short_buffer == short
        _finish(window, ran=0.001, count=3)
        assert window.size == concurrency + short
        _finish(window, ran=5.0)
        assert window.size == concurrency + worker.prefetch_buffer
        # An explicit buffer is kept as given.
        assert app.worker(concurrency=concurrency, prefetch_buffer=3).window.short_buffer is None


@pytest.mark.integration
def test_a_worker_on_nats_holds_64_messages_while_its_bodies_run_short() -> None:
    # A NATS fetch is a pull request answered in milliseconds: twice 8 slots ran dry before
    # the next batch came (docs/performance.md, "NATS: a deeper buffer for short bodies").
    require_service("nats", "127.0.0.1", 4222)
    prefix = f"tfwin{uuid.uuid4().hex[:10]}"
    url = f"nats://127.0.0.1:4222?prefix={prefix}"
    try:
        with App("window-nats", broker=url) as app:

            @app.task
            async def quick(n: int) -> int:
                return n

            worker = app.worker(concurrency=8)
            assert worker.window.size == 8 + 4
            with worker:
                results = [quick.delay(i) for i in range(20)]
                assert [r.get(timeout=10) for r in results] == list(range(20))
                assert worker.window.ran is not None and worker.window.ran < 0.02
                assert worker.window.size == 8 + 64
    finally:
        drop_prefix(url, prefix)


def test_a_default_buffer_that_is_deep_already_does_not_adapt(tmp_path: Path) -> None:
    # On SQLite the default buffer is twice the slots: long bodies do not shrink it.
    app = App("window-sqlite-fixed", broker=f"sqlite:///{tmp_path}/q.db", results="memory://")
    try:
        window = app.worker(concurrency=2).window
        assert window.short_buffer is None
        _finish(window, ran=5.0)
        assert window.size == 2 + 4
    finally:
        app.close()


def test_short_sync_bodies_deepen_a_thread_pool_workers_buffer() -> None:
    # The durations come from the bodies the worker ran on its threads, not from a test.
    with App("window-threads") as app:

        @app.task
        def quick(n: int) -> int:
            return n

        worker = app.worker(concurrency=2)
        assert worker.window.size == 2 + 1
        with worker:
            assert [quick.delay(i).get(timeout=10) for i in range(12)] == list(range(12))
            assert worker.window.ran is not None and worker.window.ran < 0.02
            assert worker.window.size == 2 + 4
