"""Where the Redis broker is linked to the Redis result store (one server, one hash tag),
a worker writes a task's outcome and settles its message in one script call
(``Delivery.ack_recording``, ``dead_letter_recording``, ``retry_recording``), and its
record writes share a call with the settles made with them (``Delivery.write_record``); a
canvas task, whose continuations run between the outcome and the settle, keeps those two
apart (real server)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import redis

from taskflow import App, chain
from taskflow.brokers.base import Message
from taskflow.brokers.redis import RedisBroker
from taskflow.results.redis import RedisResultStore
from tests.integration.redis_helpers import linked, private_url, queue_with_records, script_calls

pytestmark = pytest.mark.integration

_OUTCOME = {"status": "succeeded", "result": [1, 2], "finished_at": 1.5, "attempts": 1}


@pytest.fixture
def url(tmp_path: Path) -> Iterator[str]:
    # A server of the test's own: the tests count its script calls.
    yield from private_url(tmp_path, lease=5)


@asynccontextmanager
async def linked_with_client(
    url: str, *, link: bool = True
) -> AsyncIterator[tuple[RedisBroker, RedisResultStore, redis.Redis]]:
    client = redis.Redis.from_url(url.split("?", 1)[0])
    try:
        async with linked(url, link=link) as (broker, store):
            yield broker, store, client
    finally:
        client.close()


def test_outcomes_and_their_acks_go_in_one_script_call_with_other_settles(url: str) -> None:
    async def main() -> None:
        async with linked_with_client(url) as (broker, store, client):
            await queue_with_records(broker, store, "a", "b", "c", "d")
            a, b, c, d = await broker.fetch(["default"], 4, 0.0)
            assert a.records_linked and b.records_linked
            waiter = asyncio.ensure_future(store.wait("a", 30.0))
            await asyncio.sleep(0.05)  # the waiter is subscribed
            before = script_calls(client)
            (wrote_a, acked_a), (wrote_b, acked_b), touched, wrote_d = await asyncio.gather(
                a.ack_recording("a", _OUTCOME, 60.0),
                b.ack_recording("b", {"status": "cancelled", "finished_at": 2.0}, 60.0),
                c.touch(),
                d.write_record("d", {"status": "running", "worker": "w1"}, None),
            )
            assert script_calls(client) - before == 1
            assert (wrote_a, acked_a, wrote_b, acked_b, touched, wrote_d) == (True,) * 6
            # The record write alone leaves its message leased, and its record without a
            # time to live.
            assert await store.get("d") == {
                "id": "d",
                "status": "running",
                "attempts": 0,
                "worker": "w1",
            }
            assert client.pttl(store.key("r", "d")) == -1
            assert await store.get("a") == {"id": "a", "status": "queued", **_OUTCOME}
            assert (await store.get("b") or {})["status"] == "cancelled"
            assert 0 < client.pttl(store.key("r", "a")) <= 60_000  # the terminal record's ttl
            # The messages are gone; the touched one is still leased.
            assert not client.exists(broker.key("m", "a"), broker.key("m", "b"))
            inflight = client.zrange(broker.key("q", "default", "inflight"), 0, -1)
            assert sorted(inflight) == [b"c", b"d"]
            # A waiter is woken by the write, not by its next re-read (ten seconds).
            async with asyncio.timeout(3):
                assert (await waiter or {})["status"] == "succeeded"

    asyncio.run(main())


def test_a_lost_lease_keeps_the_written_outcome_and_reports_the_ack_failed(url: str) -> None:
    async def main() -> None:
        async with linked_with_client(url) as (broker, store, client):
            await queue_with_records(broker, store, "a")
            (old,) = await broker.fetch(["default"], 1, 0.0)
            # Published again: the message is replaced and the old delivery fenced off.
            await broker.publish([Message("a", "default", b"{}")])
            written, acked = await old.ack_recording("a", _OUTCOME, 60.0)
            assert (written, acked) == (True, False)
            assert (await store.get("a") or {})["status"] == "succeeded"
            # The new copy waits, untouched by the fenced ack.
            (new,) = await broker.fetch(["default"], 1, 0.0)
            assert new.id == "a"

    asyncio.run(main())


def test_a_terminal_record_is_left_as_it_is_and_its_message_acked(url: str) -> None:
    async def main() -> None:
        async with linked_with_client(url) as (broker, store, client):
            await queue_with_records(broker, store, "a")
            (delivery,) = await broker.fetch(["default"], 1, 0.0)
            assert await store.update("a", {"status": "cancelled"}, 60.0)
            assert await delivery.write_record("a", {"status": "running"}, None) is False
            assert await delivery.ack_recording("a", _OUTCOME, 60.0) == (False, True)
            assert (await store.get("a") or {})["status"] == "cancelled"
            assert not client.exists(broker.key("m", "a"))

    asyncio.run(main())


_FAILURE = {
    "status": "failed",
    "error": {"type": "ValueError", "message": "boom"},
    "finished_at": 1.5,
    "attempts": 1,
}


def test_a_failure_goes_with_its_dead_letter_in_one_script_call(url: str) -> None:
    async def main() -> None:
        async with linked_with_client(url) as (broker, store, client):
            await queue_with_records(broker, store, "a", "b")
            a, b = await broker.fetch(["default"], 2, 0.0)
            assert await store.update("b", {"status": "cancelled"}, 60.0)
            before = script_calls(client)
            failed, after_cancel = await asyncio.gather(
                a.dead_letter_recording("a", _FAILURE, 60.0, "failed", "ValueError: boom"),
                b.dead_letter_recording("b", _FAILURE, 60.0, "failed", "ValueError: boom"),
            )
            assert script_calls(client) - before == 1
            # Written and dead-lettered; a terminal record is left as it was, and its
            # message dead-lettered all the same.
            assert failed == (True, True)
            assert after_cancel == (False, True)
            assert await store.get("a") == {"id": "a", "status": "queued", **_FAILURE}
            assert 0 < client.pttl(store.key("r", "a")) <= 60_000
            assert (await store.get("b") or {})["status"] == "cancelled"
            letters = await broker.dead_letters("default")
            assert [(d.id, d.reason, d.error) for d in letters] == [
                ("a", "failed", "ValueError: boom"),
                ("b", "failed", "ValueError: boom"),
            ]

    asyncio.run(main())


def test_a_retry_goes_with_its_record_unless_the_record_is_final(url: str) -> None:
    async def main() -> None:
        async with linked_with_client(url) as (broker, store, client):
            await queue_with_records(broker, store, "a", "b", "c")
            a, b, c = await broker.fetch(["default"], 3, 0.0)
            assert await store.update("b", {"status": "cancelled"}, 60.0)
            await broker.publish([Message("c", "default", b"{}")])  # c's lease is fenced
            retrying = {"status": "retrying", "error": _FAILURE["error"], "attempts": 1}
            before = script_calls(client)
            results = await asyncio.gather(
                a.retry_recording("a", {**retrying, "eta": None}, b"next", 0.0, max_deliveries=3),
                b.retry_recording("b", retrying, b"next", 0.0, max_deliveries=3),
                c.retry_recording("c", retrying, b"next", 60.0, max_deliveries=3),
            )
            assert script_calls(client) - before == 1
            assert results == [(True, True), (False, False), (True, False)]
            # b: cancelled while it ran: not published again; still leased, for the
            # worker to ack (as a task settled before).
            assert (await store.get("b") or {})["status"] == "cancelled"
            inflight = client.zrange(broker.key("q", "default", "inflight"), 0, -1)
            assert inflight == [b"b"]
            assert await b.ack()
            # a: recorded as retrying (no time to live: not final) and due again now, with
            # the next attempt's body; c: the copy published meanwhile is left as it was
            # (the fence held).
            assert (await store.get("a") or {})["status"] == "retrying"
            assert client.pttl(store.key("r", "a")) == -1
            again = await broker.fetch(["default"], 3, 0.0)
            assert sorted((d.id, d.body) for d in again) == [("a", b"next"), ("c", b"{}")]

    asyncio.run(main())


def test_an_unlinked_broker_writes_no_records(url: str) -> None:
    async def main() -> None:
        async with linked_with_client(url, link=False) as (broker, store, client):
            await queue_with_records(broker, store, "a")
            (delivery,) = await broker.fetch(["default"], 1, 0.0)
            assert not delivery.records_linked
            with pytest.raises(NotImplementedError):
                await delivery.ack_recording("a", _OUTCOME, 60.0)
            with pytest.raises(NotImplementedError):
                await delivery.write_record("a", {"status": "running"}, None)
            with pytest.raises(NotImplementedError):
                await delivery.dead_letter_recording("a", _FAILURE, 60.0, "failed")
            with pytest.raises(NotImplementedError):
                await delivery.retry_recording("a", {"status": "retrying"}, b"{}", 0.0)
            assert (await store.get("a") or {})["status"] == "queued"
            assert await delivery.ack()

    asyncio.run(main())


def _terminal_updates(app: App) -> list[tuple[str, Any]]:
    """The outcomes (terminal, and retrying) the app's store is asked to write, from now
    on."""
    store = app.results
    calls: list[tuple[str, Any]] = []
    update = store.update

    async def recording(task_id: str, changes: Any, ttl: float | None) -> Any:
        if changes.get("status") in ("succeeded", "failed", "cancelled", "expired", "retrying"):
            calls.append((task_id, changes["status"]))
        return await update(task_id, changes, ttl)

    store.update = recording  # type: ignore[method-assign]
    return calls


def test_a_worker_writes_a_plain_outcome_with_its_ack_and_a_canvas_steps_apart(
    url: str,
) -> None:
    with App("outcomes", broker=url) as app:

        @app.task(name="outcomes.add")
        def add(x: int, y: int = 1) -> int:
            return x + y

        calls = _terminal_updates(app)
        with app.worker(concurrency=4):
            plain = add.delay(1)
            assert plain.get(timeout=10) == 2
            flow = chain(add.s(1), add.s()).delay()
            assert flow.get(timeout=10) == 3
        # The plain task's outcome went with its ack; each step of the chain wrote its
        # outcome on its own, before its continuation was sent and its message acked.
        assert (plain.id, "succeeded") not in calls
        assert sum(1 for _, status in calls if status == "succeeded") >= 2
        assert plain.info().status.value == "succeeded"


def test_a_worker_writes_a_retry_and_a_failure_with_their_settles(url: str) -> None:
    with App("outcomes", broker=url) as app:

        @app.task(name="outcomes.boom", retries=1, retry_backoff=0.0)
        def boom() -> None:
            raise ValueError("boom")

        calls = _terminal_updates(app)
        with app.worker(concurrency=2):
            handle = boom.delay()
            with pytest.raises(Exception, match="boom"):
                handle.get(timeout=10)
        # Neither the retry nor the failure was a record write of its own.
        assert [c for c in calls if c[0] == handle.id] == []
        info = handle.info()
        assert (info.status.value, info.attempts) == ("failed", 2)
        letters = app.admin.dead_letters("default")
        assert [(d.task_id, d.reason) for d in letters.items] == [(handle.id, "failed")]
