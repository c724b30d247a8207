"""Lease deadlines on Redis: a lease of 10 s or more ends on a whole second, rounded up
(the inflight set then stores integers, which Redis inserts into a small sorted set
without parsing text), never earlier than asked; shorter leases stay exact. Driven by a
fake clock, so the deadlines are known to the microsecond."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
import redis

from taskflow.brokers.base import Message
from taskflow.brokers.redis import RedisBroker
from taskflow.clock import FakeClock
from tests.integration.redis_helpers import drop_prefix, shared_url

pytestmark = pytest.mark.integration

START = 1_700_000_000.25  # a fractional second, as a real clock's time is


@pytest.fixture
def urls() -> Iterator[dict[float, str]]:
    made = {lease: shared_url(lease) for lease in (30.0, 10.0, 2.5)}
    yield {lease: url for lease, (url, _) in made.items()}
    for url, prefix in made.values():
        drop_prefix(url, prefix)


def deadline(broker: RedisBroker, url: str, mid: str) -> float | None:
    client = redis.Redis.from_url(url.split("?", 1)[0])
    try:
        return client.zscore(broker.key("q", "work", "inflight"), mid)
    finally:
        client.close()


@pytest.mark.parametrize(
    ("lease", "expected", "renewed"),
    [
        (30.0, 1_700_000_031.0, 1_700_000_032.0),
        (10.0, 1_700_000_011.0, 1_700_000_012.0),
        (2.5, START + 2.5, START + 1.5 + 2.5),
    ],
)
def test_a_lease_of_ten_seconds_or_more_ends_on_the_next_whole_second(
    urls: dict[float, str], lease: float, expected: float, renewed: float
) -> None:
    async def main() -> None:
        clock = FakeClock(START)
        broker = RedisBroker.from_url(urls[lease], clock=clock)
        await broker.connect()
        try:
            await broker.publish([Message("m1", "work", b"body", 0)])
            (held,) = await broker.fetch(["work"], 1, 0)
            assert deadline(broker, urls[lease], "m1") == expected
            clock.advance(1.5)
            assert await held.touch()  # renewed from now, the same way
            assert deadline(broker, urls[lease], "m1") == renewed
        finally:
            await broker.close()

    asyncio.run(main())


def test_a_rounded_lease_is_reclaimed_at_its_whole_second(urls: dict[float, str]) -> None:
    async def main() -> None:
        clock = FakeClock(START)
        broker = RedisBroker.from_url(urls[30.0], clock=clock)
        await broker.connect()
        try:
            await broker.publish([Message("m1", "work", b"body", 0, max_deliveries=2)])
            (first,) = await broker.fetch(["work"], 1, 0)
            clock.advance(29.5)
            assert await broker.fetch(["work"], 1, 0) == []  # leased
            clock.advance(0.5)  # the lease asked for has run out ...
            assert await broker.fetch(["work"], 1, 0) == []  # ... its deadline has not
            clock.advance(0.75)  # the whole second after it
            (again,) = await broker.fetch(["work"], 1, 0)
            assert (again.id, again.delivery_count) == ("m1", first.delivery_count + 1)
        finally:
            await broker.close()

    asyncio.run(main())


@pytest.mark.parametrize(("lease", "due"), [(30.0, 1_700_000_031.0), (2.5, START + 2.5)])
def test_a_fetch_that_emptied_its_queues_waits_next_for_the_deadline_the_server_set(
    urls: dict[float, str], lease: float, due: float
) -> None:
    # An idle fetcher's timer is set from this: a deadline before the server's would wake
    # it for a fetch that finds nothing.
    async def main() -> None:
        broker = RedisBroker.from_url(urls[lease], clock=FakeClock(START))
        await broker.connect()
        try:
            await broker.publish([Message("m1", "work", b"body", 0)])
            assert len(await broker.fetch(["work"], 2, 0)) == 1
            drained = broker._drained  # noqa: SLF001 -- what the next fetch starts from
            assert drained is not None
            assert drained.next_due == due == deadline(broker, urls[lease], "m1")
        finally:
            await broker.close()

    asyncio.run(main())
