"""The Redis publish script on large batches and on ids published again: it adds each
queue's ready messages together and reserves the batch's sequence numbers at once, and
must keep strict priority then FIFO order, and one copy of a message, as one message at a
time did."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from taskflow._redis.scripts import load_script
from taskflow.brokers.base import Message
from taskflow.brokers.redis import RedisBroker
from tests.integration.redis_helpers import connected, private_url

pytestmark = pytest.mark.integration


@pytest.fixture
def url(tmp_path: Path) -> Iterator[str]:
    # A server of the test's own: the tests count its script calls.
    yield from private_url(tmp_path, lease=30.0)


async def _drain(broker: RedisBroker, queue: str) -> list[tuple[str, bytes]]:
    out: list[tuple[str, bytes]] = []
    while batch := await broker.fetch([queue], 1000, 0.05):
        out += [(d.id, d.body) for d in batch]
        for d in batch:
            assert await d.ack()
    return out


def test_a_batch_larger_than_one_add_keeps_priority_then_fifo_order(url: str) -> None:
    # 4,500 messages in one publish (more than one ZADD's worth per queue), two queues,
    # three priorities; then a second batch, which must come after the first within
    # each priority.
    first = [Message(f"a{i}", ("qa", "qb")[i % 2], b"1", (0, 5, 9)[i % 3]) for i in range(4500)]
    second = [Message(f"b{i}", ("qa", "qb")[i % 2], b"2", (0, 5, 9)[i % 3]) for i in range(300)]

    async def main() -> None:
        async with connected(url) as broker:
            await broker.publish(first)
            await broker.publish(second)
            for queue in ("qa", "qb"):
                sent = [m for m in first + second if m.queue == queue]
                # Stable sort: within one priority, the order they were sent in.
                expected = [m.id for m in sorted(sent, key=lambda m: -m.priority)]
                assert [tid for tid, _ in await _drain(broker, queue)] == expected

    asyncio.run(main())


def test_an_id_twice_in_one_batch_is_kept_once_as_its_last_copy(url: str) -> None:
    later = time.time() + 3600

    async def main() -> None:
        async with connected(url) as broker:
            await broker.publish(
                [
                    Message("moved", "qa", b"old", 0),
                    Message("x1", "qa", b"other", 0),
                    Message("moved", "qb", b"new", 3),
                    Message("held", "qa", b"old", 0, later),
                    Message("held", "qa", b"now", 0),
                    Message("freed", "qa", b"now", 0),
                    Message("freed", "qa", b"later", 0, later),
                ]
            )
            assert await broker.depth("qa") == {
                "ready": 2,
                "scheduled": 1,
                "inflight": 0,
                "dead": 0,
            }
            assert (await broker.depth("qb"))["ready"] == 1
            assert await _drain(broker, "qb") == [("moved", b"new")]
            assert await _drain(broker, "qa") == [("x1", b"other"), ("held", b"now")]

    asyncio.run(main())


def test_an_id_published_again_in_a_later_batch_replaces_the_first(url: str) -> None:
    async def main() -> None:
        async with connected(url) as broker:
            await broker.publish([Message("m", "qa", b"first", 0), Message("k", "qa", b"k", 0)])
            await broker.publish([Message("n", "qb", b"n", 0), Message("m", "qb", b"second", 0)])
            assert (await broker.depth("qa"))["ready"] == 1
            assert await _drain(broker, "qb") == [("n", b"n"), ("m", b"second")]
            assert await _drain(broker, "qa") == [("k", b"k")]

    asyncio.run(main())


def test_wake_up_tokens_are_capped_at_16_and_their_list_expires(url: str) -> None:
    async def main() -> None:
        async with connected(url) as broker:
            client = broker._conn.client()  # noqa: SLF001
            notify = broker.key("q", "qa", "notify")
            await broker.publish([Message("one", "qa", b"x", 0)])
            assert await client.llen(notify) == 1
            assert 0 < await client.pttl(notify) <= 60000
            await broker.publish([Message(f"m{i}", "qa", b"x", 0) for i in range(40)])
            assert await client.llen(notify) == 16
            await broker.publish([Message("late", "qa", b"x", 0)])
            assert await client.llen(notify) == 16
            assert 0 < await client.pttl(notify) <= 60000
            # A fetch that leaves work behind keeps one token; taking the rest drops them.
            await _drain(broker, "qa")
            assert await client.exists(notify) == 0

    asyncio.run(main())


def _state(client: redis.Redis, prefix: str) -> dict[str, object]:
    """Every key under ``prefix`` (without it) and its value, but the sequence counter: a
    ready set's members in order with their priorities (the counter's values differ
    where a path reserves numbers it does not use); for a list, whether it has a time to
    live."""
    out: dict[str, object] = {}
    for raw in client.scan_iter(match=f"{prefix}:*", count=1000):
        key = raw.decode()
        kind = client.type(raw).decode()
        if key.endswith(":seq"):
            continue
        if kind == "hash":
            value: object = client.hgetall(raw)
        elif key.endswith(":ready"):
            pairs = client.zrange(raw, 0, -1, withscores=True)
            value = [(member, 9 - int(score) // 2**40) for member, score in pairs]
        elif kind == "zset":
            value = client.zrange(raw, 0, -1, withscores=True)
        elif kind == "list":
            value = (client.lrange(raw, 0, -1), client.pttl(raw) > 0)
        else:
            value = client.get(raw)
        out[key[len(prefix) :]] = value
    return out


def test_a_one_message_publish_leaves_what_the_batch_path_leaves(url: str) -> None:
    # A plain delay() publishes one message, which the script takes without the batch's
    # tables: the same calls, in the same order, on two prefixes, one through the batch's
    # path, must leave the same keys and return the same replies.
    client = redis.Redis.from_url(url.split("?", 1)[0])
    text = load_script("publish")
    assert "if n == 1 then" in text
    single = client.register_script(text)
    batch = client.register_script(text.replace("if n == 1 then", "if false then"))
    base = url.split("prefix=", 1)[1].split("&", 1)[0]
    tags = {"single": f"{{{base}s}}", "batch": f"{{{base}b}}"}
    now = time.time()
    calls = [
        ("m1", "qa", b"one", 0, ""),
        ("m2", "qa", b"two", 9, ""),
        ("m3", "qb", b"three", 5, repr(now + 3600)),  # due later: scheduled
        ("m4", "qb", b"four", 5, repr(now - 1)),  # due already: ready
        ("m1", "qb", b"one again", 3, ""),  # an id published again moves the message
        ("m3", "qa", b"three again", 2, ""),  # ... also out of the schedule
        ("m5", "qa", b"five", 0, ""),
        ("m6", "qa", b"six", 0, ""),  # over the limit set below
    ]
    try:
        for tag in tags.values():
            client.hset(f"{tag}:limits", "qa", 3)
        replies: dict[str, list[object]] = {"single": [], "batch": []}
        for mid, queue, body, priority, eta in calls:
            for name, script in (("single", single), ("batch", batch)):
                args: list[Any] = [tags[name], repr(now), 1, mid, queue, body, priority, eta, 3]
                replies[name].append(script(args=args))
        assert replies["single"] == replies["batch"]
        assert replies["single"][-1] == [b"full", b"qa", b"3", b"3"]
        single_state = _state(client, tags["single"])
        assert single_state == _state(client, tags["batch"])
        ready = {q: single_state[f":q:{q}:ready"] for q in ("qa", "qb")}
        assert ready == {
            "qa": [(b"m2", 9), (b"m3", 2), (b"m5", 0)],
            "qb": [(b"m4", 5), (b"m1", 3)],
        }
        assert ":q:qb:sched" not in single_state  # m3 moved out of the schedule
        assert single_state[":m:m3"][b"st"] == b"r"  # type: ignore[index]
    finally:
        for tag in tags.values():
            for key in client.scan_iter(match=f"{tag}:*", count=1000):
                client.delete(key)
        client.close()


def test_a_publish_leaves_a_full_list_of_wake_up_tokens_alone(url: str) -> None:
    # Nobody took the 16 tokens (no consumer is idle): a publish does not push another
    # and trim it off again; once a consumer takes one, the next publish pushes one.
    def lpush_calls(client: redis.Redis) -> int:
        stats = client.info("commandstats").get("cmdstat_lpush", {})
        return int(stats.get("calls", 0))

    async def main() -> None:
        async with connected(url) as broker:
            client = redis.Redis.from_url(url.split("?", 1)[0])
            try:
                notify = broker.key("q", "qa", "notify")
                for i in range(20):
                    await broker.publish([Message(f"m{i}", "qa", b"x", 0)])
                assert client.llen(notify) == 16
                before = lpush_calls(client)
                await broker.publish([Message("one more", "qa", b"x", 0)])
                await broker.publish([Message(f"b{i}", "qa", b"x", 0) for i in range(5)])
                assert lpush_calls(client) == before
                assert client.llen(notify) == 16
                client.lpop(notify, 3)
                await broker.publish([Message(f"c{i}", "qa", b"x", 0) for i in range(5)])
                assert lpush_calls(client) == before + 1
                assert client.llen(notify) == 16
            finally:
                client.close()

    asyncio.run(main())
