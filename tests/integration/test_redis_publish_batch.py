"""The Redis publish script on large batches and on ids published again: it adds each
queue's ready messages together and reserves the batch's sequence numbers at once, and
must keep strict priority then FIFO order, and one copy of a message, as one message at a
time did."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest

from taskflow.brokers.base import Message
from taskflow.brokers.redis import RedisBroker
from tests.integration.redis_helpers import connected, fresh_url

pytestmark = pytest.mark.integration


@pytest.fixture
def url() -> Iterator[str]:
    yield from fresh_url(lease=30.0)


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
