"""An idle Redis fetch sends its fetch with the wait, in one pipeline: a message pushed to
it is leased in the same round trip, with a lease on the server's clock; a wait that is
cancelled (the worker stops) gives back whatever that fetch took, uncounted."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest

from taskflow.brokers.base import Message
from taskflow.brokers.redis import RedisBroker
from tests.integration.redis_helpers import drop_prefix, shared_url

pytestmark = pytest.mark.integration

LEASE = 30.0


@pytest.fixture
def url() -> Iterator[str]:
    address, prefix = shared_url(lease=LEASE)
    yield address
    drop_prefix(address, prefix)


async def _blocked_clients(broker: RedisBroker) -> int:
    info = await broker._conn.client().info("clients")  # noqa: SLF001
    return int(info["blocked_clients"])


async def _until_blocked(broker: RedisBroker, before: int) -> None:
    """Until one more client waits in a blocking command (watched on the server)."""
    for _ in range(5000):
        if await _blocked_clients(broker) > before:
            return
    raise AssertionError("the fetch never blocked")


def test_a_message_pushed_to_a_waiting_fetch_is_leased_on_the_servers_clock(url: str) -> None:
    async def main() -> None:
        broker = RedisBroker.from_url(url)
        await broker.connect()
        try:
            before = await _blocked_clients(broker)
            waiting = asyncio.ensure_future(broker.fetch(["wake"], 10, 5.0))
            await _until_blocked(broker, before)
            sent = time.time()
            await broker.publish([Message("m1", "wake", b"body", 0)])
            got = await asyncio.wait_for(waiting, 5.0)
            assert [(d.id, d.delivery_count) for d in got] == [("m1", 1)]
            deadline = await broker._conn.client().zscore(  # noqa: SLF001
                broker.key("q", "wake", "inflight"), "m1"
            )
            assert deadline is not None
            assert sent + LEASE - 1.0 < deadline < time.time() + LEASE + 1.0
            assert await got[0].ack()
        finally:
            await broker.close()

    asyncio.run(main())


def test_a_cancelled_wait_gives_back_what_its_fetch_took_uncounted(url: str) -> None:
    async def main() -> None:
        broker = RedisBroker.from_url(url)
        await broker.connect()
        try:
            for i in range(20):
                before = await _blocked_clients(broker)
                waiting = asyncio.ensure_future(broker.fetch(["stop"], 10, 5.0))
                await _until_blocked(broker, before)
                await broker.publish([Message(f"m{i}", "stop", b"body", 0)])
                waiting.cancel()  # the worker stops as the message arrives
                outcome = await asyncio.gather(waiting, return_exceptions=True)
                if not isinstance(outcome[0], asyncio.CancelledError):
                    for delivery in outcome[0]:  # taken before the cancel: give it back
                        assert await delivery.nack(requeue=True)
                depth = await broker.depth("stop")
                assert depth["inflight"] == 0 and depth["ready"] == 1, depth
                again = await broker.fetch(["stop"], 10, 1.0)
                assert [(d.id, d.delivery_count) for d in again] == [(f"m{i}", 1)]
                assert await again[0].ack()
        finally:
            await broker.close()

    asyncio.run(main())
