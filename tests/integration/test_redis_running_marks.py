"""A Redis broker marks the task records of its result store running as it leases their
messages, when the worker will start every message it takes at once: one round trip less
before each body (real server)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
import redis

from taskflow import App, TaskContext
from taskflow.brokers.base import Message
from taskflow.brokers.redis import RedisBroker, RedisDelivery
from taskflow.results.redis import RedisResultStore
from tests.integration.redis_helpers import fresh_url, linked, queue_with_records

pytestmark = pytest.mark.integration


@pytest.fixture
def url() -> Iterator[str]:
    yield from fresh_url(lease=5)


def _status(client: redis.Redis, store: RedisResultStore, task_id: str) -> Any:
    raw = client.hget(store.key("r", task_id), "status")
    return None if raw is None else orjson.loads(raw)


def _updates(app: App, monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, dict[str, Any], str]]:
    """Every record update the app's store is asked for from now on (``"store"``), and
    every one a delivery writes with its settles (``Delivery.write_record``,
    ``"delivery"``)."""
    store = app.results
    calls: list[tuple[str, dict[str, Any], str]] = []
    update = store.update
    write = RedisDelivery.write_record

    async def recording(task_id: str, changes: Any, ttl: float | None) -> Any:
        calls.append((task_id, dict(changes), "store"))
        return await update(task_id, changes, ttl)

    async def writing(self: RedisDelivery, task_id: str, changes: Any, ttl: Any) -> Any:
        calls.append((task_id, dict(changes), "delivery"))
        return await write(self, task_id, changes, ttl)

    store.update = recording  # type: ignore[method-assign]
    monkeypatch.setattr(RedisDelivery, "write_record", writing)
    return calls


def test_an_idle_worker_starts_a_stored_task_on_the_record_its_fetch_marked(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with App("marks", broker=url) as app:
        store = app.results
        assert isinstance(store, RedisResultStore)
        client = redis.Redis.from_url(url.split("?", 1)[0])
        seen: dict[str, Any] = {}

        @app.task(name="marks.look", bind=True)
        def look(ctx: TaskContext, n: int) -> int:
            seen["status"] = _status(client, store, ctx.id)
            seen["worker writes before the body"] = [c for c in calls if c[0] == ctx.id]
            return n * 2

        calls = _updates(app, monkeypatch)
        try:
            with app.worker(concurrency=4):
                handle = look.delay(21)
                assert handle.get(timeout=10) == 42
            # The fetch marked the record running; the worker wrote nothing before the body.
            assert seen == {"status": "running", "worker writes before the body": []}
            info = handle.info()
            assert (info.status.value, info.attempts) == ("succeeded", 1)
            assert info.worker and info.started_at is not None
            # A short body: the rest of the running record went out with the outcome, and
            # the outcome with the ack (Delivery.ack_recording), not as a write of its own.
            assert [c for c in calls if c[0] == handle.id] == []
        finally:
            client.close()


def test_a_long_body_gets_the_rest_of_its_running_record_while_it_runs(url: str) -> None:
    with App("marks", broker=url) as app:
        release = threading.Event()

        @app.task(name="marks.wait")
        def wait() -> None:
            release.wait(10)

        with app.worker(concurrency=2):
            handle = wait.delay()
            deadline = time.monotonic() + 5
            info = handle.info()
            while not info.worker and time.monotonic() < deadline:
                time.sleep(0.01)
                info = handle.info()
            release.set()
            assert (info.status.value, info.attempts) == ("running", 1)
            assert info.worker
            handle.get(timeout=10)


def test_a_rate_limited_task_keeps_the_workers_own_running_write(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A fetched job could wait for its rate limit: its record must not say running yet.
    with App("marks", broker=url) as app:

        @app.task(name="marks.limited", rate_limit="1000/s")
        def limited() -> int:
            return 1

        calls = _updates(app, monkeypatch)
        with app.worker(concurrency=2):
            handle = limited.delay()
            assert handle.get(timeout=10) == 1
        # The worker wrote "running" itself, with its settles; the outcome went with the ack.
        statuses = [c[1].get("status") for c in calls if c[0] == handle.id]
        assert statuses == ["running"]
        assert [c[2] for c in calls if c[0] == handle.id] == ["delivery"]
        assert handle.info().status.value == "succeeded"


def test_a_fetch_marks_records_only_when_it_takes_at_most_start(url: str) -> None:
    async def main() -> None:
        async with linked(url) as (broker, store):
            await queue_with_records(broker, store, "a", "b")
            got = await broker.fetch_starting(["default"], 2, 0.0, start=1)
            assert [(d.id, d.running_recorded) for d in got] == [("a", False), ("b", False)]
            assert [(await store.get(i) or {})["status"] for i in "ab"] == ["queued"] * 2
            for delivery in got:
                await delivery.nack()
            got = await broker.fetch_starting(["default"], 2, 0.0, start=2)
            assert [(d.id, d.running_recorded) for d in got] == [("a", True), ("b", True)]
            record = await store.get("a") or {}
            assert (record["status"], record["attempts"]) == ("running", 0)
            assert isinstance(record["started_at"], float)

    asyncio.run(main())


def test_a_marked_record_goes_back_to_queued_when_its_message_is_handed_back(url: str) -> None:
    async def main() -> None:
        async with linked(url) as (broker, store):
            await queue_with_records(broker, store, "a")
            (delivery,) = await broker.fetch_starting(["default"], 1, 0.0, start=1)
            assert delivery.running_recorded
            assert await delivery.nack(requeue=True)
            assert (await store.get("a") or {})["status"] == "queued"
            (again,) = await broker.fetch(["default"], 1, 0.0)  # and the message is back
            assert (again.id, again.running_recorded) == ("a", False)

    asyncio.run(main())


def test_a_final_expired_or_missing_record_is_not_marked(url: str) -> None:
    async def main() -> None:
        async with linked(url) as (broker, store):
            await store.create_many([("final", {"status": "cancelled"})], None)
            await store.create_many([("old", {"status": "queued"})], 0.5)
            await broker.publish([Message(i, "default", b"{}") for i in ("final", "old", "none")])
            await asyncio.sleep(0.6)  # the "old" record's lifetime runs out
            got = await broker.fetch_starting(["default"], 3, 0.0, start=3)
            assert [(d.id, d.running_recorded) for d in got] == [
                ("final", False),
                ("old", False),
                ("none", False),
            ]
            assert (await store.get("final") or {})["status"] == "cancelled"
            assert await store.get("old") is None
            assert await store.get("none") is None  # no record made for a task without one

    asyncio.run(main())


def test_records_on_another_hash_tag_or_database_are_not_linked(url: str) -> None:
    broker = RedisBroker.from_url(url)
    other_prefix = RedisResultStore.from_url(url.replace("prefix=", "prefix=x"))
    other_db = RedisResultStore.from_url(url.replace("/0?", "/1?"))
    assert not broker.link_records(other_prefix.record_location())
    assert not broker.link_records(other_db.record_location())
    assert not broker.link_records(None)
