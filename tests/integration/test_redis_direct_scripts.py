"""Script calls on the asyncio pool go out on connections kept for them (no pool checkout
per call), and fall back to the client's own path, with its retries, when a kept
connection or the server's scripts are gone; a call cancelled with its reply in flight
does not leave that reply for the next call."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from taskflow._redis.connection import redis_client
from taskflow._redis.kept import PoolKept
from taskflow.brokers.base import Message
from taskflow.brokers.redis import RedisBroker
from taskflow.errors import BrokerError
from tests.integration.redis_helpers import connected, count_checkouts, fresh_url, private_redis

pytestmark = pytest.mark.integration


@pytest.fixture
def url() -> Iterator[str]:
    yield from fresh_url(lease=30.0)


def _count_checkouts(broker: RedisBroker) -> list[int]:
    return count_checkouts(broker._conn.client().connection_pool)  # noqa: SLF001


def test_script_calls_one_after_another_take_one_connection_from_the_pool(url: str) -> None:
    async def main() -> None:
        async with connected(url) as broker:
            checkouts = _count_checkouts(broker)
            for i in range(30):
                await broker.publish([Message(f"m{i}", "direct", b"body", 0)])
                assert (await broker.depth("direct"))["ready"] == i + 1
            assert checkouts == [1]

    asyncio.run(main())


def test_more_calls_at_once_than_kept_connections_each_get_their_own_reply(url: str) -> None:
    async def main() -> None:
        async with connected(url) as broker:
            queues = [f"q{i}" for i in range(24)]
            for i, queue in enumerate(queues):
                await broker.publish([Message(f"{queue}m{k}", queue, b"b", 0) for k in range(i)])
            for _ in range(3):
                depths = await asyncio.gather(*(broker.depth(q) for q in queues))
                assert [d["ready"] for d in depths] == list(range(24))

    asyncio.run(main())


def test_a_scripts_own_error_is_raised_and_its_connection_kept(url: str) -> None:
    async def main() -> None:
        async with connected(url) as broker:
            checkouts = _count_checkouts(broker)
            with pytest.raises(BrokerError):
                await broker._run("publish", ["not a count"])  # noqa: SLF001
            assert (await broker.depth("direct"))["ready"] == 0
            assert checkouts == [1]

    asyncio.run(main())


def test_a_call_cancelled_with_its_reply_in_flight_leaves_nothing_for_the_next(url: str) -> None:
    async def main() -> None:
        async with connected(url) as broker:
            await broker.publish([Message("m1", "full", b"body", 0)])
            conn = broker._conn  # noqa: SLF001
            kept = conn._kept.idle()  # noqa: SLF001 -- the one the next call takes
            assert kept is not None
            conn._kept.give_back(kept)  # noqa: SLF001
            read = kept.read_response

            async def cancelled_before_reading(*args: Any, **kwargs: Any) -> Any:
                kept.read_response = read  # type: ignore[method-assign]
                raise asyncio.CancelledError  # as if cancelled while the reply is on its way

            kept.read_response = cancelled_before_reading  # type: ignore[method-assign]
            with pytest.raises(asyncio.CancelledError):
                await broker.depth("full")
            # The reply to the cancelled call ({1, 0, 0, 0}) is not taken for this one.
            assert await broker.depth("empty") == {
                "ready": 0,
                "scheduled": 0,
                "inflight": 0,
                "dead": 0,
            }
            assert (await broker.depth("full"))["ready"] == 1

    asyncio.run(main())


def test_script_calls_survive_a_script_flush_and_killed_connections(tmp_path: Path) -> None:
    with private_redis(tmp_path) as (port, _):

        async def main() -> None:
            broker = RedisBroker.from_url(f"redis://127.0.0.1:{port}/0?prefix=direct")
            admin = redis.Redis(port=port)
            await broker.connect()
            try:
                await broker.publish([Message("m0", "q", b"body", 0)])
                admin.script_flush()  # as after a restart without persistence
                await broker.publish([Message("m1", "q", b"body", 0)])
                admin.client_kill_filter(_type="normal", skipme=True)  # dropped connections
                await broker.publish([Message("m2", "q", b"body", 0)])
                assert (await broker.depth("q"))["ready"] == 3
            finally:
                await broker.close()
                admin.close()

        asyncio.run(main())


def test_a_connection_freed_after_its_client_was_closed_is_not_kept(url: str) -> None:
    # A call in flight while its owner closes (and maybe opens again) gives its connection
    # back afterwards: that connection belongs to the closed pool and must not be kept
    # for the owner's next calls, nor counted against its limit.
    async def main() -> None:
        first = redis_client(url.split("?", 1)[0], 5.0, 5.0)
        owner: dict[str, Any] = {"client": first}
        kept = PoolKept(1, lambda: owner["client"])
        conn = await kept.take(first)
        assert conn is not None
        assert kept.release(first, conn) and kept.idle() is conn  # the owner's own: kept
        owner["client"] = second = redis_client(url.split("?", 1)[0], 5.0, 5.0)
        kept.reset()  # the owner closed the first client and opened another
        assert kept.release(first, conn) is False
        await kept.drop(first, conn)
        assert kept.idle() is None
        again = await kept.take(second)  # the limit of one is free for the new client
        assert again is not None and again is not conn
        assert kept.release(second, again)
        await first.aclose()
        await second.aclose()

    asyncio.run(main())
