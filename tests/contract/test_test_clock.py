"""Brokers on a test clock: a fetch that is already waiting sees the clock jump.

The contract suites run on real time. These tests give the brokers that take a clock
(memory, Redis, SQLite; NATS and RabbitMQ keep the server's time -- RabbitMQ's delays are
message TTLs -- and ignore it) a ``FakeClock`` and move it
past a delayed message's due time while a fetch waits: the message must come at once,
not after the fetch's own timeout, whichever thread moves the clock.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import uuid

import pytest

from taskflow.brokers.base import Broker, Message
from taskflow.clock import FakeClock

from .conftest import BROKERS, run

SERVER_TIME = {"nats", "amqp"}
CLOCKED = [name for name in sorted(BROKERS) if name not in SERVER_TIME]


class WatchedClock(FakeClock):
    """A fake clock that notes when a broker asks it how long to wait for a due time: the
    fetch asking is about to wait (each broker listens for the clock's jumps before)."""

    def __init__(self) -> None:
        super().__init__()
        self.asked: concurrent.futures.Future[None] = concurrent.futures.Future()

    def real_timeout(self, seconds: float) -> float | None:
        if not self.asked.done():
            self.asked.set_result(None)
        return super().real_timeout(seconds)


async def _waiting_fetch_after_a_jump(
    broker: Broker, clock: WatchedClock, queue: str, from_thread: bool
) -> tuple[list[str], float]:
    loop = asyncio.get_running_loop()
    clock.asked = concurrent.futures.Future()  # this fetch's question, not an earlier one
    fetch = asyncio.ensure_future(broker.fetch([queue], 1, 10.0))
    await asyncio.wait_for(asyncio.wrap_future(clock.asked), 10.0)
    assert not fetch.done(), "the message is not due yet: the fetch must wait"
    started = loop.time()
    if from_thread:
        await loop.run_in_executor(None, clock.advance, 61.0)
    else:
        clock.advance(61.0)
    got = await fetch
    return [d.id for d in got], loop.time() - started


@pytest.mark.parametrize("from_thread", [False, True], ids=["same-thread", "other-thread"])
@pytest.mark.parametrize("backend", CLOCKED)
def test_a_waiting_fetch_takes_a_message_the_clock_made_due_at_once(
    loop: asyncio.AbstractEventLoop, backend: str, from_thread: bool
) -> None:
    clock = WatchedClock()
    broker: Broker = run(loop, BROKERS[backend](clock, 30.0))
    run(loop, broker.connect())
    try:
        queue = f"q-{uuid.uuid4().hex[:10]}"
        run(loop, broker.publish([Message("later", queue, b"x", eta=clock.time() + 60.0)]))
        ids, took = run(loop, _waiting_fetch_after_a_jump(broker, clock, queue, from_thread))
        assert ids == ["later"]
        assert took < 2.0, f"the fetch woke {took:.2f}s after the jump"
    finally:
        run(loop, broker.close())
