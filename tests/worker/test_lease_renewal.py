"""Lease renewal is per delivery: the first renewal is due a third of the lease after the
delivery was taken, however long the leases of older deliveries are."""

from __future__ import annotations

import asyncio
import gc
import logging
import weakref

import pytest

from taskflow.brokers.base import Delivery
from taskflow.errors import BrokerError
from taskflow.worker.leases import LeaseKeeper


class Recorded(Delivery):
    """A delivery that notes when it was renewed (loop time)."""

    def __init__(self, lease: float, fail: int = 0) -> None:
        super().__init__("m", "q", b"", 0, 1)
        self._lease = lease
        self.touches: list[float] = []
        self.renewed = asyncio.Event()
        self.fail = fail

    @property
    def lease(self) -> float | None:
        return self._lease

    async def touch(self) -> bool:
        if self.fail:
            self.fail -= 1
            raise BrokerError("broker briefly away")
        self.touches.append(asyncio.get_running_loop().time())
        self.renewed.set()
        return True

    async def ack(self) -> bool:
        return True

    async def nack(self, *, requeue: bool = True) -> bool:
        return True

    async def retry(self, body: bytes, delay: float, *, max_deliveries: int = 1) -> bool:
        return True

    async def dead_letter(self, reason: str, error: str | None = None) -> bool:
        return True


async def _with_keeper(keeper: LeaseKeeper) -> asyncio.Task[None]:
    task = asyncio.create_task(keeper.run())
    await keeper.waiting.wait()
    return task


async def _stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def test_a_new_delivery_is_renewed_a_third_of_its_lease_after_it_was_taken() -> None:
    async def scenario() -> None:
        keeper = LeaseKeeper("w")
        runner = await _with_keeper(keeper)
        loop = asyncio.get_running_loop()
        # An old delivery with a long lease puts the keeper to sleep for 10 s ...
        keeper.hold(Recorded(lease=30.0), loop.time())
        keeper.waiting.clear()
        await keeper.waiting.wait()
        # ... and a new one with a short lease must not wait for that.
        short = Recorded(lease=0.6)
        taken = loop.time()
        keeper.hold(short, taken)
        await asyncio.wait_for(short.renewed.wait(), timeout=2.0)
        first = short.touches[0] - taken
        assert 0.2 - 0.02 <= first <= 0.2 + 0.1
        short.renewed.clear()
        await asyncio.wait_for(short.renewed.wait(), timeout=2.0)
        assert short.touches[1] - short.touches[0] == pytest.approx(0.2, abs=0.1)
        await _stop(runner)

    asyncio.run(scenario())


def test_a_dropped_delivery_is_no_longer_renewed() -> None:
    async def scenario() -> None:
        keeper = LeaseKeeper("w")
        runner = await _with_keeper(keeper)
        loop = asyncio.get_running_loop()
        settled, held = Recorded(lease=0.3), Recorded(lease=0.3)
        keeper.hold(settled, loop.time())
        keeper.hold(held, loop.time())
        keeper.drop(settled)
        await asyncio.wait_for(held.renewed.wait(), timeout=2.0)
        held.renewed.clear()
        await asyncio.wait_for(held.renewed.wait(), timeout=2.0)  # two rounds later
        assert settled.touches == []
        assert len(keeper) == 1
        await _stop(runner)

    asyncio.run(scenario())


def test_a_failed_renewal_is_tried_again_soon_and_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario() -> None:
        keeper = LeaseKeeper("w")
        runner = await _with_keeper(keeper)
        loop = asyncio.get_running_loop()
        flaky = Recorded(lease=0.6, fail=3)
        taken = loop.time()
        keeper.hold(flaky, taken)
        await asyncio.wait_for(flaky.renewed.wait(), timeout=3.0)
        # Three failures, each retried after lease/6, still well inside the lease.
        assert flaky.touches[0] - taken < 0.6
        await _stop(runner)

    with caplog.at_level(logging.DEBUG, logger="taskflow.worker"):
        asyncio.run(scenario())
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [r.getMessage() for r in warnings] == [
        "worker w: lease renewal failed (BrokerError: broker briefly away); retrying with backoff"
    ]


def test_settled_deliveries_are_not_kept_until_their_renewal_would_have_been_due() -> None:
    # A worker settling thousands of tasks a second would otherwise keep every delivery
    # (and its message) of the last third of a lease.
    keeper = LeaseKeeper("w")
    held = [Recorded(lease=30.0) for _ in range(50)]
    for delivery in held:
        keeper.hold(delivery, 0.0)
    settled = []
    for i in range(10_000):
        delivery = Recorded(lease=30.0)
        keeper.hold(delivery, float(i))
        keeper.drop(delivery)
        settled.append(weakref.ref(delivery))
        del delivery
    gc.collect()
    alive = sum(ref() is not None for ref in settled)
    assert alive <= 256 + 2 * len(held)
    assert len(keeper) == len(held)


def test_held_deliveries_are_renewed_after_the_settled_ones_were_cleared_out() -> None:
    async def scenario() -> None:
        keeper = LeaseKeeper("w")
        loop = asyncio.get_running_loop()
        held = [Recorded(lease=0.3) for _ in range(3)]
        for delivery in held:
            keeper.hold(delivery, loop.time())
        for _ in range(2_000):  # enough to clear the heap out several times
            settled = Recorded(lease=0.3)
            keeper.hold(settled, loop.time())
            keeper.drop(settled)
        runner = asyncio.create_task(keeper.run())
        for delivery in held:
            await asyncio.wait_for(delivery.renewed.wait(), timeout=2.0)
        await _stop(runner)

    asyncio.run(scenario())


class Lost(Recorded):
    """A delivery whose lease was lost: the broker delivered it to another worker."""

    async def touch(self) -> bool:
        self.touches.append(asyncio.get_running_loop().time())
        return False


def test_a_lease_is_assured_for_two_thirds_of_it_after_it_was_taken_or_renewed() -> None:
    async def scenario() -> None:
        keeper = LeaseKeeper("w")
        now = asyncio.get_running_loop().time()
        fresh, stale = Recorded(lease=30.0), Recorded(lease=30.0)
        keeper.hold(fresh, now - 19.0)  # 11 s of its 30 left: assured
        keeper.hold(stale, now - 21.0)  # 9 s left: renewed before a body starts
        assert keeper.assured(fresh)
        assert not keeper.assured(stale)
        keeper.renewed(stale, now, held=True)
        assert keeper.assured(stale)
        # A renewal made earlier than the last confirmation does not move it back.
        keeper.renewed(stale, now - 25.0, held=True)
        assert keeper.assured(stale)
        # A delivery without a lease (RabbitMQ's) has nothing to renew.
        assert keeper.assured(Recorded(lease=0.0))

    asyncio.run(scenario())


def test_a_lease_found_lost_by_its_renewal_is_never_assured_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario() -> None:
        keeper = LeaseKeeper("w")
        loop = asyncio.get_running_loop()
        lost = Lost(lease=0.3)
        keeper.hold(lost, loop.time())
        assert keeper.assured(lost)
        runner = asyncio.create_task(keeper.run())
        while not lost.touches:  # its first renewal, a third of its lease after it was taken
            await keeper.waiting.wait()
            keeper.waiting.clear()
        assert not keeper.assured(lost)
        assert len(keeper) == 0
        keeper.renewed(lost, loop.time(), held=False)
        await _stop(runner)

    with caplog.at_level(logging.WARNING, logger="taskflow.worker"):
        asyncio.run(scenario())
    assert "the lease of message m ran out before it was renewed" in caplog.text
