"""Outcomes of sync bodies reach the loop in batches, each to the task that awaits it."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from typing import Any

import pytest

from taskflow.worker.bodies import Completions


class _CountingLoop:
    """Counts the thread-safe wake-ups a Completions asks of its loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.wakeups = 0

    def create_future(self) -> asyncio.Future[Any]:
        return self.loop.create_future()

    def call_soon_threadsafe(self, callback: Any, *args: Any) -> Any:
        self.wakeups += 1
        return self.loop.call_soon_threadsafe(callback, *args)


def test_outcomes_finished_meanwhile_share_one_wakeup() -> None:
    asyncio.run(_outcomes_finished_meanwhile_share_one_wakeup())


async def _outcomes_finished_meanwhile_share_one_wakeup() -> None:
    counting = _CountingLoop(asyncio.get_running_loop())
    completions = Completions(counting)  # type: ignore[arg-type]
    cfuts: list[concurrent.futures.Future[Any]] = [concurrent.futures.Future() for _ in range(50)]
    futs = [completions.watch(c) for c in cfuts]

    def finish_all() -> None:  # another thread, while the loop is busy here
        for i, cfut in enumerate(cfuts):
            if i == 7:
                cfut.set_exception(ValueError("seven"))
            else:
                cfut.set_result(i)

    thread = threading.Thread(target=finish_all)
    thread.start()
    thread.join()  # the loop has not run since: every outcome waits for one wake-up
    assert counting.wakeups == 1
    outcomes = await asyncio.gather(*futs, return_exceptions=True)
    assert [o for i, o in enumerate(outcomes) if i != 7] == [i for i in range(50) if i != 7]
    assert isinstance(outcomes[7], ValueError)
    # The next outcome after a delivery wakes the loop again.
    late: concurrent.futures.Future[Any] = concurrent.futures.Future()
    fut = completions.watch(late)
    threading.Thread(target=late.set_result, args=("late",)).start()
    assert await fut == "late"
    assert counting.wakeups == 2


def test_a_cancelled_waiter_does_not_stop_the_others() -> None:
    asyncio.run(_a_cancelled_waiter_does_not_stop_the_others())


async def _a_cancelled_waiter_does_not_stop_the_others() -> None:
    completions = Completions(asyncio.get_running_loop())
    first: concurrent.futures.Future[Any] = concurrent.futures.Future()
    second: concurrent.futures.Future[Any] = concurrent.futures.Future()
    waiter = completions.watch(first)  # a future, registered at once
    other = completions.watch(second)
    waiter.cancel()
    first.set_result(1)
    second.set_result(2)
    assert await other == 2
    with pytest.raises(asyncio.CancelledError):
        await waiter


def test_a_cancelled_body_cancels_its_waiter() -> None:
    asyncio.run(_a_cancelled_body_cancels_its_waiter())


async def _a_cancelled_body_cancels_its_waiter() -> None:
    completions = Completions(asyncio.get_running_loop())
    cfut: concurrent.futures.Future[Any] = concurrent.futures.Future()
    fut = completions.watch(cfut)
    assert cfut.cancel()
    with pytest.raises(asyncio.CancelledError):
        await fut
