"""An idle Redis fetch sends its fetch with the wait, in one pipeline: a message pushed to
it is leased in the same round trip, with a lease on the server's clock; a wait that is
cancelled (the worker stops) gives back whatever that fetch took, uncounted. A fetch that
follows one which left its queues empty starts with that wait (no round trip to find
nothing), and still sees what became ready since and what falls due. The wait and its
fetch go out on a connection kept for them (no pool checkout per wait), and fall back to
the client's pipeline when that connection or the server's scripts are gone."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from taskflow.brokers.base import Message
from taskflow.brokers.redis import RedisBroker
from tests.integration.redis_helpers import (
    connected,
    count_checkouts,
    fresh_url,
    private_redis,
)

pytestmark = pytest.mark.integration

LEASE = 30.0


@pytest.fixture
def url() -> Iterator[str]:
    yield from fresh_url(lease=LEASE)


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
        async with connected(url) as broker:
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

    asyncio.run(main())


def test_a_cancelled_wait_gives_back_what_its_fetch_took_uncounted(url: str) -> None:
    async def main() -> None:
        async with connected(url) as broker:
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

    asyncio.run(main())


def _count_first_looks(broker: RedisBroker) -> list[int]:
    """Counts the fetches made before a wait (not the ones sent behind it)."""
    calls = [0]
    once = broker._fetch_once  # noqa: SLF001

    async def counted(*args: Any) -> Any:
        calls[0] += 1
        return await once(*args)

    broker._fetch_once = counted  # type: ignore[method-assign]  # noqa: SLF001
    return calls


def test_after_a_fetch_that_emptied_its_queues_the_next_one_waits_without_looking_first(
    url: str,
) -> None:
    async def main() -> None:
        async with connected(url) as broker:
            looks = _count_first_looks(broker)
            await broker.publish([Message("m1", "pick", b"body", 0)])
            first = await broker.fetch(["pick"], 10, 5.0)
            assert [d.id for d in first] == ["m1"] and looks == [1]
            before = await _blocked_clients(broker)
            waiting = asyncio.ensure_future(broker.fetch(["pick"], 10, 5.0))
            await _until_blocked(broker, before)
            assert looks == [1]  # the second fetch went straight to its wait
            await broker.publish([Message("m2", "pick", b"body", 0)])
            second = await asyncio.wait_for(waiting, 5.0)
            assert [d.id for d in second] == ["m2"] and looks == [1]
            # Other queues than those it emptied: it looks first, as before.
            await broker.publish([Message("m3", "other", b"body", 0)])
            third = await broker.fetch(["pick", "other"], 10, 5.0)
            assert [d.id for d in third] == ["m3"] and looks == [2]
            for delivery in [*first, *second, *third]:
                assert await delivery.ack()

    asyncio.run(main())


def test_a_fetch_that_does_not_wait_still_looks_after_its_queues_were_emptied(url: str) -> None:
    async def main() -> None:
        async with connected(url) as broker:
            await broker.publish([Message("m1", "poll", b"body", 0)])
            first = await broker.fetch(["poll"], 10, 5.0)
            await broker.publish([Message("m2", "poll", b"body", 0)])
            second = await broker.fetch(["poll"], 10, 0.0)  # run_until_idle's fetch
            assert [d.id for d in second] == ["m2"]
            for delivery in [*first, *second]:
                assert await delivery.ack()

    asyncio.run(main())


def test_a_message_handed_back_after_its_queue_was_emptied_is_taken_at_once(url: str) -> None:
    async def main() -> None:
        async with connected(url) as broker:
            await broker.publish([Message("m1", "back", b"body", 0)])
            first = await broker.fetch(["back"], 10, 5.0)
            assert await first[0].nack(requeue=True)
            started = time.monotonic()
            again = await broker.fetch(["back"], 10, 5.0)
            assert [(d.id, d.delivery_count) for d in again] == [("m1", 1)]
            assert time.monotonic() - started < 2.0  # woken, not the end of the wait
            assert await again[0].ack()

    asyncio.run(main())


def test_a_lease_taken_by_the_fetch_that_emptied_the_queue_is_reclaimed_when_it_runs_out(
    url: str,
) -> None:
    async def main() -> None:
        async with connected(url.replace(f"lease={LEASE}", "lease=0.3")) as broker:
            await broker.publish([Message("m1", "lapse", b"body", 0, max_deliveries=2)])
            first = await broker.fetch(["lapse"], 10, 5.0)
            assert [d.id for d in first] == ["m1"]  # and never renewed: its worker died
            started = time.monotonic()
            again = await broker.fetch(["lapse"], 10, 4.0)
            # Woken by the wait's own timer at the lease's end, not at the end of the wait.
            assert [(d.id, d.delivery_count) for d in again] == [("m1", 2)]
            assert time.monotonic() - started < 2.0
            assert await again[0].ack()

    asyncio.run(main())


def _count_wait_checkouts(broker: RedisBroker) -> list[int]:
    """Counts the connections the waits take from their blocking pool."""
    return count_checkouts(broker._waits._blocker.connection_pool)  # noqa: SLF001


async def _pick_up(broker: RedisBroker, queue: str, mid: str) -> None:
    """Publish ``mid`` to a fetch waiting on ``queue`` and take it (acked)."""
    before = await _blocked_clients(broker)
    waiting = asyncio.ensure_future(broker.fetch([queue], 10, 5.0))
    await _until_blocked(broker, before)
    await broker.publish([Message(mid, queue, b"body", 0)])
    got = await asyncio.wait_for(waiting, 5.0)
    assert [(d.id, d.delivery_count) for d in got] == [(mid, 1)]
    assert await got[0].ack()


def test_waits_one_after_another_take_one_connection_from_their_pool(url: str) -> None:
    async def main() -> None:
        async with connected(url) as broker:
            await broker.publish([Message("m0", "kept", b"body", 0)])
            first = await broker.fetch(["kept"], 10, 5.0)  # empties the queue
            assert len(first) == 1 and await first[0].ack()
            checkouts = _count_wait_checkouts(broker)
            for i in range(1, 21):
                await _pick_up(broker, "kept", f"m{i}")
            assert checkouts == [1]

    asyncio.run(main())


def test_a_wait_survives_a_script_flush_and_its_connection_killed(tmp_path: Path) -> None:
    with private_redis(tmp_path) as (port, _):

        async def main() -> None:
            async with connected(f"redis://127.0.0.1:{port}/0?prefix=waits&lease=30") as broker:
                admin = redis.Redis(port=port)
                try:
                    await broker.publish([Message("m0", "q", b"body", 0)])
                    first = await broker.fetch(["q"], 10, 5.0)
                    assert len(first) == 1 and await first[0].ack()
                    await _pick_up(broker, "q", "m1")  # the kept connection is open
                    # The fetch behind the wait meets NOSCRIPT: the fetch after it takes m2.
                    admin.script_flush()
                    await _pick_up(broker, "q", "m2")
                    # The kept connection killed while it waits: the client's pipeline,
                    # on a new connection, waits again and takes m3.
                    before = await _blocked_clients(broker)
                    waiting = asyncio.ensure_future(broker.fetch(["q"], 10, 5.0))
                    await _until_blocked(broker, before)
                    assert admin.client_kill_filter(_type="normal", skipme=True) >= 1
                    await broker.publish([Message("m3", "q", b"body", 0)])
                    got = await asyncio.wait_for(waiting, 5.0)
                    assert [(d.id, d.delivery_count) for d in got] == [("m3", 1)]
                    assert await got[0].ack()
                    assert await broker.depth("q") == {
                        "ready": 0,
                        "scheduled": 0,
                        "inflight": 0,
                        "dead": 0,
                    }
                finally:
                    admin.close()

        asyncio.run(main())
