"""On NATS the lease is the consumers' ack wait, which the server keeps for every process:
the consuming broker sets it, a producer with another lease leaves it alone, and a
delivery reports the lease that really applies."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator

import pytest

from taskflow.brokers.base import Message
from taskflow.brokers.nats import NatsBroker
from tests.integration import nats_helpers

pytestmark = pytest.mark.integration


@pytest.fixture
def prefix() -> Iterator[str]:
    url, name = nats_helpers.shared_url(lease=1)
    yield name
    nats_helpers.drop_prefix(url, name)


def test_the_consumer_lease_wins_over_a_producer_declared_earlier_or_later(prefix: str) -> None:
    url, queue = "nats://127.0.0.1:4222", f"q-{uuid.uuid4().hex[:8]}"

    async def body() -> None:
        producer = NatsBroker(url, prefix=prefix, lease=30.0)
        worker = NatsBroker(url, prefix=prefix, lease=1.0)
        await producer.connect()
        await worker.connect()
        try:
            await producer.declare(queue)  # creates the consumers with a 30 s ack wait
            await producer.publish([Message(uuid.uuid4().hex, queue, b"a", max_deliveries=5)])
            (held,) = await worker.fetch([queue], 1, 5.0)
            assert held.lease == pytest.approx(1.0)
            await producer.close()
            producer = NatsBroker(url, prefix=prefix, lease=30.0)
            await producer.connect()
            await producer.declare(queue)  # a later producer does not reset it to 30 s
            assert await held.touch()  # renewed right after the fetch
            started = time.monotonic()
            while time.monotonic() - started < 2.5:  # over two leases, renewed each third
                assert await worker.fetch([queue], 1, 1.0 / 3) == []
                assert await held.touch()
            assert await held.ack()
            # Unrenewed, the lease really is 1 s: the server redelivers after it.
            await producer.publish([Message(uuid.uuid4().hex, queue, b"b", max_deliveries=5)])
            (first,) = await worker.fetch([queue], 1, 5.0)
            fetched = time.monotonic()
            (again,) = await worker.fetch([queue], 1, 5.0)
            assert again.id == first.id and again.delivery_count == 2
            assert time.monotonic() - fetched < 2.5
            assert await again.ack()
        finally:
            await producer.close()
            await worker.close()

    asyncio.run(body())
