"""The fetch script's looks at a queue's sets: a fetch that empties its queue does not pop
or count the ready set again, and a schedule or lease set with nothing due costs one look
at its first member; what falls due is still taken, in order, and reported.

Counted on a server of the test's own (``INFO commandstats`` counts every client's
commands)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from taskflow.brokers.base import Message
from tests.integration.redis_helpers import connected, private_url

pytestmark = pytest.mark.integration


@pytest.fixture
def url(tmp_path: Path) -> Iterator[str]:
    yield from private_url(tmp_path, lease=30)


@pytest.fixture
def admin(url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(url.split("?", 1)[0])
    yield client
    client.close()


def _calls(client: redis.Redis) -> dict[str, int]:
    stats = client.info("commandstats")
    return {name[len("cmdstat_") :]: int(s["calls"]) for name, s in stats.items()}


def _since(client: redis.Redis, before: dict[str, int], *names: str) -> dict[str, int]:
    now = _calls(client)
    return {name: now.get(name, 0) - before.get(name, 0) for name in names}


def test_a_fetch_that_empties_its_queue_looks_at_each_set_once(
    url: str, admin: redis.Redis
) -> None:
    async def main() -> None:
        async with connected(url) as broker:
            await broker.publish([Message("m1", "q", b"body", 0)])
            before = _calls(admin)
            got = await broker.fetch(["q"], 10, 0.0)
            assert [d.id for d in got] == ["m1"]
            counted = _since(admin, before, "zpopmin", "zcard", "zrangebyscore", "zrange", "zrem")
            # One pop that came back short, no count of the set it emptied, and one look
            # at the schedule and at the leases, where nothing was due.
            assert counted == {"zpopmin": 1, "zcard": 0, "zrangebyscore": 0, "zrange": 2, "zrem": 0}
            # The queue is empty: no wake-up token is left for anyone.
            assert admin.llen(broker.key("q", "q", "notify")) == 0
            assert await got[0].ack()

    asyncio.run(main())


def test_a_full_batch_leaves_a_token_and_due_messages_are_taken_in_order(
    url: str, admin: redis.Redis
) -> None:
    async def main() -> None:
        async with connected(url.replace("lease=30", "lease=0.2")) as broker:
            now = time.time()
            await broker.publish(
                [Message(f"r{i}", "q", b"b", 0, max_deliveries=3) for i in range(3)]
            )
            # A batch that fills up leaves the rest ready and a token for others.
            admin.delete(broker.key("q", "q", "notify"))
            first = await broker.fetch(["q"], 2, 0.0)
            assert [d.id for d in first] == ["r0", "r1"]
            assert admin.llen(broker.key("q", "q", "notify")) == 1
            # Two scheduled a moment ago and one later; the leases of r0 and r1 run out
            # in 0.2 s (never renewed).
            await broker.publish(
                [
                    Message("s-late", "q", b"b", 0, eta=now + 60),
                    Message("s1", "q", b"b", 0, eta=now - 2),
                    Message("s2", "q", b"b", 0, eta=now - 1),
                ]
            )
            second = await broker.fetch(["q"], 10, 0.0)
            assert [d.id for d in second] == ["r2", "s1", "s2"]
            for delivery in second:
                assert await delivery.ack()
            await asyncio.sleep(0.3)  # real time, for the server's clock
            third = await broker.fetch(["q"], 10, 0.0)
            assert [(d.id, d.delivery_count) for d in third] == [("r0", 2), ("r1", 2)]
            depth = await broker.depth("q")
            assert depth["scheduled"] == 1 and depth["ready"] == 0
            for delivery in third:
                assert await delivery.ack()

    asyncio.run(main())


def test_the_next_due_time_is_the_earliest_left_in_either_set(url: str) -> None:
    async def main() -> None:
        async with connected(url) as broker:
            now = time.time()
            await broker.publish(
                [
                    Message("due", "q", b"b", 0, eta=now - 1),
                    Message("later", "q", b"b", 0, eta=now + 40),
                    Message("latest", "q", b"b", 0, eta=now + 50),
                ]
            )
            got = await broker.fetch(["q"], 10, 0.0)
            assert [d.id for d in got] == ["due"]
            # "due" was promoted and leased for 30 s: the lease falls due before "later";
            # the fetch reports the schedule's earliest (the broker adds its own leases'
            # deadline itself).
            reply = await broker._run("fetch", ["30", 10, 1, "q"])  # noqa: SLF001
            assert reply[0] and abs(float(reply[0]) - (now + 30)) < 5.0
            assert await got[0].ack()
            reply = await broker._run("fetch", ["30", 10, 1, "q"])  # noqa: SLF001
            assert abs(float(reply[0]) - (now + 40)) < 1.0

    asyncio.run(main())
