"""Task events on NATS: workers publish them only while some reader listens, and a reader
gets them with typed results."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from taskflow import App, TaskStatus
from taskflow.results.nats import NatsResultStore
from tests.integration import nats_helpers

pytestmark = pytest.mark.integration


@pytest.fixture
def url() -> Iterator[str]:
    url, prefix = nats_helpers.shared_url(lease=30)
    yield url
    nats_helpers.drop_prefix(url, prefix)


async def _until_listened(store: NatsResultStore) -> None:
    """Ask until the reader's subscriptions are in place (it subscribes when first read)."""
    async with asyncio.timeout(5):
        while await store.event_listeners() == 0:
            await asyncio.sleep(0.01)


def test_event_listeners_counts_readers_and_events_reach_them(url: str) -> None:
    async def body() -> None:
        reader, worker = NatsResultStore.from_url(url), NatsResultStore.from_url(url)
        await reader.connect()
        await worker.connect()
        try:
            assert await worker.event_listeners() == 0  # nobody reads: publish nothing
            stream = reader.subscribe_events()
            first = asyncio.ensure_future(anext(stream))
            await _until_listened(worker)
            await worker.publish_event({"task_id": "t1", "status": "succeeded"})
            assert (await asyncio.wait_for(first, 5))["task_id"] == "t1"
            await stream.aclose()  # the reader leaves: its answer goes with it
            await reader._conn.client().flush()
            assert await worker.event_listeners() == 0
        finally:
            await reader.close()
            await worker.close()

    asyncio.run(body())


def test_app_events_on_nats_arrive_with_typed_results(url: str) -> None:
    app = App("events", broker=url)

    @app.task
    def square(x: int) -> int:
        return x * x

    @app.task
    def broken() -> None:
        raise ValueError("no")

    try:
        sub = app.events(buffer=50)
        with app.worker(concurrency=2):
            ok = [square.delay(i) for i in range(3)]
            bad = broken.delay()
            events = [sub.get(timeout=10) for _ in range(4)]
        sub.close()
    finally:
        app.close()
    by_id = {e.task_id: e for e in events}
    assert {r.id for r in ok} | {bad.id} == set(by_id)
    assert [by_id[r.id].result for r in ok] == [0, 1, 4]
    assert by_id[bad.id].status == TaskStatus.FAILED.value
