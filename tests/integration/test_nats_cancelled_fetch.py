"""A NATS fetch cancelled after it pulled messages (a worker stopping just after a task was
sent) still settles them: a delayed message is nak'ed with its delay, a work message is
handed back uncounted. Left pending, they would wait out their consumer's ack wait (30 s)
and run that late, the work message with a delivery spent."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from taskflow.brokers import _nats_delay, _nats_fetch
from taskflow.brokers.nats import NatsBroker
from tests.conftest import require_service
from tests.contract.backend_nats import URL, _delete_streams
from tests.contract.test_broker_contract import msg

COUNTDOWN = 1.5


@asynccontextmanager
async def two_brokers() -> AsyncIterator[tuple[NatsBroker, NatsBroker, str]]:
    """A broker whose fetch the test cancels, another on the same prefix, and a queue."""
    require_service("nats", "127.0.0.1", 4222)
    prefix = f"tfcancel{uuid.uuid4().hex[:12]}"
    stopping = NatsBroker(URL, prefix=prefix, lease=30)
    other = NatsBroker(URL, prefix=prefix, lease=30)
    try:
        await stopping.connect()
        await other.connect()
        queue = f"q{uuid.uuid4().hex[:6]}"
        await stopping.declare(queue)
        yield stopping, other, queue
    finally:
        await stopping.close()
        await other.close()
        await _delete_streams(
            [stopping.work, stopping.delays, stopping.dlq, f"KV_{stopping.state_bucket}"]
        )


async def cancel_while_held(
    broker: NatsBroker, queue: str, hold: Callable[[Callable[[], Awaitable[Any]]], Any]
) -> None:
    """Fetch from ``queue`` on ``broker`` and cancel the fetch while ``hold`` (patched into
    the step after a pull) keeps a pulled message; then let the step go on."""
    pulled, go_on = asyncio.Event(), asyncio.Event()

    async def held(step: Callable[[], Awaitable[Any]]) -> Any:
        pulled.set()
        await go_on.wait()
        return await step()

    hold(held)
    fetching = asyncio.ensure_future(broker.fetch([queue], 10, 5.0))
    await asyncio.wait_for(pulled.wait(), 10)
    fetching.cancel()
    await asyncio.sleep(0)  # the fetch is cancelled while the message is held
    go_on.set()
    await asyncio.gather(fetching, return_exceptions=True)
    assert fetching.cancelled()


def test_a_fetch_cancelled_while_it_schedules_a_countdown_leaves_it_on_time() -> None:
    async def body() -> None:
        async with two_brokers() as (stopping, other, queue):
            due = time.time() + COUNTDOWN
            await other.publish([msg(queue, b"later", eta=due)])
            promote = _nats_delay.NatsDelays._promote
            delays = stopping._delays

            def hold(held: Callable[[Callable[[], Awaitable[Any]]], Any]) -> None:
                async def slow(message: Any) -> None:
                    await held(lambda: promote(delays, message))

                delays._promote = slow  # type: ignore[method-assign]

            await cancel_while_held(stopping, queue, hold)

            got = await other.fetch([queue], 10, COUNTDOWN + 5.0)
            while not got and time.time() < due + 10:
                got = await other.fetch([queue], 10, 1.0)
            assert [d.body for d in got] == [b"later"]
            assert time.time() - due < 1.5  # on time, not after the 30 s ack wait
            assert await got[0].ack()

    asyncio.run(body())


def test_a_fetch_cancelled_while_it_admits_a_message_hands_it_back_uncounted() -> None:
    async def body() -> None:
        async with two_brokers() as (stopping, other, queue):
            await other.publish([msg(queue, b"now")])
            admit = _nats_fetch.NatsFetcher._admit
            fetcher = stopping._fetcher

            def hold(held: Callable[[Callable[[], Awaitable[Any]]], Any]) -> None:
                async def slow(message: Any, name: str, level: int) -> Any:
                    return await held(lambda: admit(fetcher, message, name, level))

                fetcher._admit = slow  # type: ignore[method-assign]

            began = time.monotonic()
            await cancel_while_held(stopping, queue, hold)

            got = await other.fetch([queue], 10, 10.0)
            assert [d.body for d in got] == [b"now"]
            assert time.monotonic() - began < 5.0  # not after the 30 s lease
            assert got[0].delivery_count == 1  # handed back uncounted
            assert await got[0].ack()

    asyncio.run(body())
