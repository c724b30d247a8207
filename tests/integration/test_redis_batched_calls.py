"""The fetch and settle scripts make their per-message writes in a few calls per script
call (one INCRBY for the tokens and one ZADD into the inflight set per round of a fetch;
one ZREM per queue and one DEL for the acks of a settle): every message still gets a token
of its own and a lease, and an acked message is gone for the rest of its settle call, as it
was when each ack deleted it at once."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
import redis

from taskflow.brokers.base import Message
from tests.integration.redis_helpers import connected, fresh_url

pytestmark = pytest.mark.integration


@pytest.fixture
def url() -> Iterator[str]:
    yield from fresh_url(lease=30.0)


@pytest.fixture
def client(url: str) -> Iterator[redis.Redis]:
    """A plain client of the broker's server, to look at its keys (closed after)."""
    with redis.Redis.from_url(url.split("?", 1)[0]) as plain:
        yield plain


def test_a_fetch_of_thousands_leases_each_message_once_with_a_token_of_its_own(
    url: str, client: redis.Redis
) -> None:
    count = 4500  # more values than Lua unpacks at once (about 8,000) for one ZADD

    async def main() -> None:
        async with connected(url) as broker:
            for start in range(0, count, 500):
                await broker.publish(
                    [Message(f"m{i}", "bulk", b"body", i % 10) for i in range(start, start + 500)]
                )
            await broker.publish([Message("late", "bulk", b"body", 0)])
            got = await broker.fetch(["bulk"], count, 0.0)
            assert len(got) == count
            assert len({d.id for d in got}) == count
            tokens = [d._token for d in got]  # noqa: SLF001
            assert len(set(tokens)) == count and all(t.isdigit() for t in tokens)
            inflight = broker.key("q", "bulk", "inflight")
            assert client.zcard(inflight) == count
            assert (await broker.depth("bulk"))["ready"] == 1  # the one left behind
            # every lease is held, and every one settles (one settle call for all)
            args: list[tuple[str, ...]] = [
                ("ack", d.id, d._token, "", "", "")  # noqa: SLF001
                for d in got
            ]
            assert await broker._send_settles(args) == [1] * count  # noqa: SLF001
            assert client.zcard(inflight) == 0
            assert not any(client.exists(broker.key("m", d.id)) for d in got[:50])
            again = await broker.fetch(["bulk"], 10, 0.0)
            assert [d.id for d in again] == ["late"]
            assert again[0]._token not in tokens  # noqa: SLF001

    asyncio.run(main())


def test_an_acked_message_is_gone_for_the_later_items_of_its_settle_call(
    url: str, client: redis.Redis
) -> None:
    async def main() -> None:
        async with connected(url) as broker:
            await broker.publish([Message("a", "fence", b"x", 0), Message("b", "fence", b"y", 0)])
            got = {d.id: d for d in await broker.fetch(["fence"], 2, 0.0)}
            a, b = got["a"], got["b"]
            tok_a, tok_b = a._token, b._token  # noqa: SLF001
            results = await broker._send_settles(  # noqa: SLF001
                [
                    ("ack", "a", tok_a, "", "", ""),
                    ("touch", "a", tok_a, "", "", ""),  # would renew a lease held still
                    ("requeue", "a", tok_a, "", "", ""),  # would put it back in its queue
                    ("ack", "a", tok_a, "", "", ""),
                    ("touch", "b", tok_b, "", "", ""),
                ]
            )
            assert results == [1, 0, 0, 0, 1]
            inflight = broker.key("q", "fence", "inflight")
            assert client.zrange(inflight, 0, -1) == [b"b"]
            assert not client.exists(broker.key("m", "a"))
            assert (await broker.depth("fence"))["ready"] == 0
            assert await b.ack()
            assert client.zcard(inflight) == 0

    asyncio.run(main())
