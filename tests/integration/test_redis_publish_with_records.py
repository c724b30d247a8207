"""Where the Redis broker is linked to the Redis result store (one server, one hash tag),
the queued records of the tasks sent go in the publish script's call with their messages
(``Broker.publish_recording``): one script call per send instead of two, and all or
nothing (real server)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from taskflow import App
from taskflow.brokers.base import Message
from taskflow.errors import QueueFull
from tests.integration.redis_helpers import linked, private_url, script_calls

pytestmark = pytest.mark.integration

_QUEUED = {"status": "queued", "attempts": 0, "task": "t", "queue": "default"}


@pytest.fixture
def url(tmp_path: Path) -> Iterator[str]:
    # A server of the test's own: the tests count its script calls.
    yield from private_url(tmp_path, lease=5)


@pytest.fixture
def client(url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(url.split("?", 1)[0])
    yield client
    client.close()


def test_the_queued_records_go_in_the_publish_call_and_a_record_there_is_left(
    url: str, client: redis.Redis
) -> None:
    async def main() -> None:
        async with linked(url) as (broker, store):
            await store.create_many([("b", {"status": "cancelled"})], None)
            before = script_calls(client)
            await broker.publish_recording(
                [Message("a", "default", b"{}"), Message("b", "default", b"{}")],
                [("a", _QUEUED), ("b", _QUEUED)],
            )
            assert script_calls(client) - before == 1
            assert await store.get("a") == {"id": "a", **_QUEUED}
            assert (await store.get("b") or {})["status"] == "cancelled"
            assert client.pttl(store.key("r", "a")) == -1  # a queued record does not expire
            got = await broker.fetch(["default"], 5, 0.0)
            assert sorted(d.id for d in got) == ["a", "b"]
            # One message, and from a plain thread: one call too.
            before = script_calls(client)
            await asyncio.to_thread(
                broker.publish_recording_blocking,
                [Message("c", "default", b"{}")],
                [("c", _QUEUED)],
            )
            assert script_calls(client) - before == 1
            assert (await store.get("c") or {})["status"] == "queued"

    asyncio.run(main())


def test_a_full_queue_refuses_the_messages_and_writes_no_record(url: str) -> None:
    async def main() -> None:
        async with linked(url) as (broker, store):
            await broker.declare("small", max_length=1)
            await broker.publish_recording([Message("a", "small", b"{}")], [("a", _QUEUED)])
            with pytest.raises(QueueFull):
                await broker.publish_recording([Message("b", "small", b"{}")], [("b", _QUEUED)])
            with pytest.raises(QueueFull):
                broker.publish_recording_blocking(
                    [Message("c", "small", b"{}"), Message("d", "small", b"{}")],
                    [("c", _QUEUED), ("d", _QUEUED)],
                )
            assert [await store.get(i) for i in "bcd"] == [None, None, None]
            assert (await broker.depth("small"))["ready"] == 1

    asyncio.run(main())


def test_an_unlinked_broker_publishes_no_records(url: str) -> None:
    async def main() -> None:
        async with linked(url, link=False) as (broker, _):
            with pytest.raises(NotImplementedError):
                await broker.publish_recording([Message("a", "default", b"{}")], [])
            with pytest.raises(NotImplementedError):
                broker.publish_recording_blocking([Message("a", "default", b"{}")], [])

    asyncio.run(main())


def _sends(app: App, client: redis.Redis) -> dict[str, Any]:
    """Script calls per send of a task that stores its result: ``delay()`` from this
    thread, ``adelay()`` from a loop, ``enqueue_many`` of ten; the records' statuses, and
    the fields of one (the created time only whether it is there)."""

    @app.task(name="records.add", queue="other", priority=7)
    def add(x: int) -> int:
        return x + 1

    add.delay(0)  # connected, the queue declared and the scripts loaded
    calls: dict[str, Any] = {}
    before = script_calls(client)
    sent = add.delay(1)
    calls["delay"] = script_calls(client) - before

    async def send() -> Any:
        return await add.adelay(2)

    before = script_calls(client)
    asent = asyncio.run(send())
    calls["adelay"] = script_calls(client) - before
    before = script_calls(client)
    many = app.enqueue_many([add.s(i) for i in range(10)])
    calls["enqueue_many"] = script_calls(client) - before
    calls["statuses"] = {r.info().status.value for r in (sent, asent, *many)}
    info = sent.info()
    created = info.created_at is not None
    calls["record"] = (info.name, info.queue, info.priority, info.attempts, created)
    return calls


def _expected(calls_per_send: int) -> dict[str, Any]:
    """What :func:`_sends` finds when each send is ``calls_per_send`` script calls: every
    record queued, with the task's fields (the same whichever writes it)."""
    return {
        "delay": calls_per_send,
        "adelay": calls_per_send,
        "enqueue_many": calls_per_send,
        "statuses": {"queued"},
        "record": ("records.add", "other", 7, 0, True),
    }


def test_a_send_on_the_default_result_store_is_one_script_call(
    url: str, client: redis.Redis
) -> None:
    with App("records", broker=url) as app:
        assert app.kernel.backends.records_linked
        calls = _sends(app, client)
    assert calls == _expected(calls_per_send=1)


def test_a_send_with_a_store_elsewhere_writes_the_records_apart(
    url: str, client: redis.Redis
) -> None:
    base = url.split("?", 1)[0]
    prefix = url.split("prefix=", 1)[1].split("&", 1)[0]
    with App("records", broker=url, results=f"{base}?prefix={prefix}x") as app:
        assert not app.kernel.backends.records_linked
        try:
            calls = _sends(app, client)
        finally:
            for key in client.scan_iter(match=f"{{{prefix}x}}:*", count=1000):
                client.delete(key)
    assert calls == _expected(calls_per_send=2)
