"""Callbacks through crashes, and a chain cancelled while it advances, on the memory
backends with a fake clock and ``Worker.run_until_idle()`` (no real waiting).

A "crash" is an exception at a chosen point of settling: the message is then never acked,
exactly as when the process dies there, and the broker hands it out again once its lease
has run out (the fake clock is moved past it).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from taskflow import App, FakeClock, TaskCancelled, TaskFailed, TaskStatus, chain
from taskflow.brokers import MemoryBroker
from taskflow.canvas.results import cancel_canvas
from taskflow.message import Envelope
from taskflow.results import MemoryResultStore

LEASE = 5.0


@pytest.fixture
def capp(clock: FakeClock) -> Iterator[App]:
    application = App(
        "callbacks-worker",
        broker=MemoryBroker(lease=LEASE, clock=clock),
        results=MemoryResultStore(clock=clock),
        clock=clock,
        result_ttl=600.0,
    )
    yield application
    application.close()


@pytest.fixture(autouse=True)
def quiet_worker_errors(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.CRITICAL, logger="taskflow.worker")


@pytest.fixture
def t(capp: App) -> SimpleNamespace:
    seen: list[tuple[str, Any]] = []

    @capp.task(name="double", retries=1)
    def double(x: int) -> int:
        return 2 * x

    @capp.task(name="broken", retries=1, retry_backoff=10.0, retry_jitter=False)
    def broken(x: int) -> int:
        raise ValueError(f"broken {x}")

    @capp.task(name="note", retries=1)
    def note(value: Any, tag: str) -> None:
        seen.append((tag, value))

    return SimpleNamespace(double=double, broken=broken, note=note, seen=seen)


def drain(app: App, clock: FakeClock, rounds: int = 5) -> None:
    """Run everything due, then let leases and backoffs run out and run again."""
    worker = app.worker(concurrency=4)
    for _ in range(rounds):
        worker.run_until_idle()
        clock.advance(LEASE + 10)


Advance = Callable[[Envelope, TaskStatus, Any], Awaitable[None]]


def crash_once_around_advance(app: App, when: str, names: set[str]) -> list[str]:
    """Make settling of tasks named ``names`` die once each, ``before`` or ``after`` the
    continuations ran."""
    real: Advance = app.kernel.run_continuations
    crashed: list[str] = []

    async def advance(env: Envelope, status: TaskStatus, encoded: Any) -> None:
        first = env.task in names and env.id not in crashed
        if first and when == "before":
            crashed.append(env.id)
            raise RuntimeError("worker died before the callbacks")
        await real(env, status, encoded)
        if first and when == "after":
            crashed.append(env.id)
            raise RuntimeError("worker died before the ack")

    app.kernel.run_continuations = advance  # type: ignore[method-assign, assignment]
    return crashed


@pytest.mark.parametrize("when", ["before", "after"])
def test_a_callback_is_sent_once_when_the_worker_dies_around_sending_it(
    capp: App, clock: FakeClock, t: SimpleNamespace, when: str
) -> None:
    ok = t.double.apply_async((4,), link=t.note.s("ok"), link_error=t.note.s("never"))
    bad = t.broken.apply_async((1,), link=t.note.s("never"), link_error=t.note.s("err"))
    crashed = crash_once_around_advance(capp, when, {"double", "broken"})
    drain(capp, clock)
    assert sorted(crashed) == sorted([ok.id, bad.id])
    assert ok.get(timeout=0) == 8
    with pytest.raises(TaskFailed):
        bad.get(timeout=0)
    assert sorted(t.seen) == [("err", bad.id), ("ok", 8)]


def test_a_callback_claimed_but_never_sent_is_sent_on_redelivery(
    capp: App, clock: FakeClock, t: SimpleNamespace
) -> None:
    store = capp.results
    real_create_many = store.create_many
    died: list[bool] = []

    async def create_many(items: Any, ttl: float | None) -> Any:
        if not died and any(record.get("name") == "note" for _, record in items):
            died.append(True)
            raise RuntimeError("worker died after the callback's idempotency key was set")
        return await real_create_many(items, ttl)

    async def no_cleanup(*args: Any) -> None:  # a dead process cleans nothing up
        return None

    store.create_many = create_many  # type: ignore[method-assign]
    capp.kernel.enqueuer.undo = no_cleanup  # type: ignore[method-assign, assignment]
    result = t.double.apply_async((5,), link=t.note.s("ok"))
    drain(capp, clock)
    assert died
    assert result.get(timeout=0) == 10
    assert t.seen == [("ok", 10)]


def test_link_error_waits_for_the_last_retry_and_a_retry_sends_nothing(
    capp: App, clock: FakeClock, t: SimpleNamespace
) -> None:
    result = t.broken.apply_async((2,), link_error=t.note.s("err"))
    worker = capp.worker()
    worker.run_until_idle()
    assert result.status is TaskStatus.RETRYING
    assert t.seen == []
    clock.advance(20.0)
    worker.run_until_idle()
    assert result.status is TaskStatus.FAILED
    assert t.seen == [("err", result.id)]


def test_a_cancelled_task_sends_neither_callback(
    capp: App, clock: FakeClock, t: SimpleNamespace
) -> None:
    result = t.double.apply_async((3,), link=t.note.s("ok"), link_error=t.note.s("err"))
    assert result.cancel()
    drain(capp, clock)
    assert result.status is TaskStatus.CANCELLED
    assert t.seen == []


def test_a_chain_whose_step_has_a_link_survives_crashes_and_sends_it_once(
    capp: App, clock: FakeClock, t: SimpleNamespace
) -> None:
    result = chain(t.double.s(1).set(link=t.note.s("step")), t.double.s()).apply_async()
    crash_once_around_advance(capp, "after", {"double"})
    drain(capp, clock)
    assert result.get(timeout=0) == 4
    assert t.seen == [("step", 2)]


def test_a_replayed_task_sends_link_error_once_and_its_link_when_it_now_succeeds(
    capp: App, clock: FakeClock
) -> None:
    seen: list[tuple[str, Any]] = []
    fail = [True]

    @capp.task(name="shaky")
    def shaky(x: int) -> int:
        if fail[0]:
            raise ValueError("shaky")
        return x

    @capp.task(name="record")
    def record(value: Any, tag: str) -> None:
        seen.append((tag, value))

    result = shaky.apply_async((1,), link=record.s("ok"), link_error=record.s("err"))
    drain(capp, clock)
    assert seen == [("err", result.id)]
    assert capp.admin.replay(ids=[result.id]).replayed == 1
    drain(capp, clock)
    assert result.status is TaskStatus.FAILED
    assert seen == [("err", result.id)]  # the same failure again: not a second time
    fail[0] = False
    assert capp.admin.replay(ids=[result.id]).replayed == 1
    drain(capp, clock)
    assert result.get(timeout=0) == 1
    assert seen == [("err", result.id), ("ok", 1)]


def test_a_chain_cancelled_between_its_advance_and_the_next_send_never_sends_that_step(
    capp: App, clock: FakeClock, t: SimpleNamespace, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="taskflow")
    result = chain(t.double.s(1), t.double.s(), t.double.s()).apply_async()
    step = result.steps[1].id
    store = capp.results
    real_create_many = store.create_many
    cancelled: list[int] = []

    async def create_many(items: Any, ttl: float | None) -> Any:
        if not cancelled and any(tid == step for tid, _ in items):
            # cancel() lands after the advance read the chain as running, before the send.
            store.create_many = real_create_many  # type: ignore[method-assign]
            cancelled.append(await cancel_canvas(capp.kernel, result.id))
        return await real_create_many(items, ttl)

    store.create_many = create_many  # type: ignore[method-assign]
    worker = capp.worker()
    worker.run_until_idle()
    # Step 0's message was acked at once: its advance did not fail over the taken id.
    assert [(q.ready, q.running, q.dead) for q in capp.admin.queues()] == [(0, 0, 0)]
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert any("cancelled before it was sent" in r.getMessage() for r in caplog.records)
    assert result.steps[0].get(timeout=0) == 2
    assert result.steps[1].status is TaskStatus.CANCELLED
    assert result.steps[2].status is TaskStatus.CANCELLED
    with pytest.raises(TaskCancelled):
        result.get(timeout=0)
    assert cancelled == [2]  # the step being sent and the one after it
    assert worker.stats()["processed"] == 1  # step 0 settled once; step 1 was never sent
    assert capp.admin.dead_letters().items == []
