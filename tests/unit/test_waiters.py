"""``wait_future``: a wait that times out leaves the waiter registered and pending."""

from __future__ import annotations

import asyncio

from taskflow._waiters import Waiters, wait_future


def test_a_timed_out_wait_leaves_the_future_pending_for_the_next_wait() -> None:
    async def body() -> tuple[bool, bool, bool, float]:
        loop = asyncio.get_running_loop()
        waiters = Waiters()
        fut = waiters.register_async()
        first = await wait_future(fut, 0.01)
        pending = not fut.done()
        started = loop.time()
        second = await wait_future(fut, 0.05)  # waits again, not "fired" at once
        waited = loop.time() - started
        loop.call_later(0.01, waiters.notify_all)
        third = await wait_future(fut, 5.0)
        return first, pending and not second, third, waited

    first, pending_again, fired, waited = asyncio.run(body())
    assert first is False
    assert pending_again
    assert fired is True  # a notification after the timeouts still reaches it
    assert waited >= 0.04


def test_a_future_already_cancelled_does_not_read_as_fired() -> None:
    async def body() -> bool:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        fut.cancel()
        return await wait_future(fut, 1.0)

    assert asyncio.run(body()) is False
