"""Canvas progress through crashes, retries, TTLs and typed values, on the memory backends
with a fake clock and ``Worker.run_until_idle()`` (no real waiting).

A "crash" is an exception at a chosen point of settling: the message is then never acked,
exactly as when the process dies there, and the broker hands it out again once its lease
has run out (the fake clock is moved past it).
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from datetime import date
from types import SimpleNamespace
from typing import Any

import pytest

from taskflow import (
    App,
    AsyncResult,
    FakeClock,
    NotFound,
    PayloadError,
    TaskCancelled,
    TaskFailed,
    TaskStatus,
    chain,
    chord,
    group,
)
from taskflow.brokers import MemoryBroker
from taskflow.message import Envelope
from taskflow.results import MemoryResultStore
from taskflow.task import Signature

LEASE = 5.0


@dataclasses.dataclass
class Invoice:
    number: int
    due: date


@pytest.fixture
def capp(clock: FakeClock) -> Iterator[App]:
    application = App(
        "canvas-worker",
        broker=MemoryBroker(lease=LEASE, clock=clock),
        results=MemoryResultStore(clock=clock),
        clock=clock,
        result_ttl=600.0,
    )
    yield application
    application.close()


@pytest.fixture
def t(capp: App) -> SimpleNamespace:
    ran: Counter[str] = Counter()

    # retries=1: a member may be delivered again after a crash (with no retry left, a lost
    # delivery is dead-lettered as worker_lost instead).
    @capp.task(name="square", retries=1)
    def square(x: int) -> int:
        ran["square"] += 1
        return x * x

    @capp.task(name="total", retries=1)
    def total(xs: list[int]) -> int:
        ran["total"] += 1
        return sum(xs)

    @capp.task(name="flaky", retries=2, retry_backoff=10.0, retry_jitter=False)
    def flaky(x: int) -> int:
        ran["flaky"] += 1
        raise ConnectionError(f"flaky {x}")

    @capp.task(name="plain")  # retries=0: one delivery only
    def plain(x: int) -> int:
        ran["plain"] += 1
        return x + 1

    @capp.task(name="invoice")
    def invoice(n: int) -> Invoice:
        return Invoice(n, date(2024, 1, n))

    @capp.task(name="due_day")
    def due_day(inv: Invoice, extra: int = 0) -> int:
        assert isinstance(inv, Invoice)
        return inv.due.day + extra

    return SimpleNamespace(
        plain=plain,
        square=square,
        total=total,
        flaky=flaky,
        invoice=invoice,
        due_day=due_day,
        ran=ran,
    )


def drain(app: App, clock: FakeClock, rounds: int = 4) -> None:
    """Run everything due, then let leases run out and run again (redeliveries)."""
    worker = app.worker(concurrency=4)
    for _ in range(rounds):
        worker.run_until_idle()
        clock.advance(LEASE + 1)


Advance = Callable[[Envelope, TaskStatus, Any], Awaitable[None]]


def crash_once_around_advance(app: App, when: str, task_ids: set[str]) -> list[str]:
    """Make settling of ``task_ids`` die once each, ``before`` or ``after`` advancing."""
    real: Advance = app.kernel.run_continuations
    crashed: list[str] = []

    async def advance(env: Envelope, status: TaskStatus, encoded: Any) -> None:
        first = env.id in task_ids and env.id not in crashed
        if first and when == "before":
            crashed.append(env.id)
            raise RuntimeError("worker died before advancing")
        await real(env, status, encoded)
        if first and when == "after":
            crashed.append(env.id)
            raise RuntimeError("worker died before the ack")

    app.kernel.run_continuations = advance  # type: ignore[method-assign, assignment]
    return crashed


@pytest.fixture(autouse=True)
def quiet_worker_errors(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.CRITICAL, logger="taskflow.worker")


@pytest.mark.parametrize("when", ["before", "after"])
def test_a_member_redelivered_after_a_crash_completes_the_chord_and_the_body_runs_once(
    capp: App, clock: FakeClock, t: SimpleNamespace, when: str
) -> None:
    result = chord([t.square.s(i) for i in range(6)], t.total.s()).apply_async()
    crashed = crash_once_around_advance(capp, when, {r.id for r in result.header.results})
    drain(capp, clock)
    assert len(crashed) == 6  # every member died once while settling
    assert result.get(timeout=0) == sum(i * i for i in range(6))
    assert t.ran["square"] == 6  # redelivered members are not run again
    assert t.ran["total"] == 1


def test_a_member_without_retries_whose_worker_died_after_its_record_still_counts(
    capp: App, clock: FakeClock, t: SimpleNamespace
) -> None:
    # With no retry left the broker dead-letters the lost delivery (worker_lost) instead of
    # redelivering it; the worker reports it, and the stored success is what counts.
    result = chord([t.plain.s(i) for i in range(4)], t.total.s()).apply_async()
    crashed = crash_once_around_advance(capp, "before", {r.id for r in result.header.results})
    drain(capp, clock)
    assert len(crashed) == 4
    assert result.get(timeout=0) == 1 + 2 + 3 + 4
    assert t.ran["plain"] == 4
    assert t.ran["total"] == 1


def test_a_crash_between_the_member_slot_and_the_counter_still_completes_the_group(
    capp: App, clock: FakeClock, t: SimpleNamespace
) -> None:
    store = capp.results
    real_incr = store.incr
    failed: list[str] = []

    async def incr(key: str, amount: int = 1, ttl: float | None = None) -> int:
        if key.endswith(":done") and len(failed) < 1:
            failed.append(key)
            raise RuntimeError("worker died between the slot and the counter")
        return await real_incr(key, amount, ttl)

    store.incr = incr  # type: ignore[method-assign]
    result = chord([t.square.s(i) for i in range(3)], t.total.s()).apply_async()
    drain(capp, clock)
    assert failed
    assert result.get(timeout=0) == 0 + 1 + 4
    assert t.ran["total"] == 1


def test_a_crash_after_claiming_the_body_but_before_sending_it_sends_it_on_redelivery(
    capp: App, clock: FakeClock, t: SimpleNamespace
) -> None:
    result = chord([t.square.s(i) for i in range(3)], t.total.s()).apply_async()
    body_id = result.body.id
    store = capp.results
    real_create_many = store.create_many
    died: list[bool] = []

    async def create_many(items: Any, ttl: float | None) -> Any:
        if not died and any(tid == body_id for tid, _ in items):
            died.append(True)
            raise RuntimeError("worker died after the idempotency key was set")
        return await real_create_many(items, ttl)

    async def no_cleanup(*args: Any) -> None:  # a dead process cleans nothing up
        return None

    store.create_many = create_many  # type: ignore[method-assign]
    capp.kernel.enqueuer.undo = no_cleanup  # type: ignore[method-assign, assignment]
    drain(capp, clock)
    assert died
    assert result.get(timeout=0) == 5
    assert t.ran["total"] == 1


def test_a_chain_step_redelivered_after_its_advance_does_not_send_the_next_step_twice(
    capp: App, clock: FakeClock, t: SimpleNamespace
) -> None:
    result = chain(t.square.s(2), t.square.s(), t.square.s()).apply_async()
    crashed = crash_once_around_advance(capp, "after", {s.id for s in result.steps})
    drain(capp, clock)
    assert len(crashed) == 3
    assert result.get(timeout=0) == 256
    assert t.ran["square"] == 3


def test_a_chain_waits_for_a_failing_steps_retries_before_it_fails(
    capp: App, clock: FakeClock, t: SimpleNamespace
) -> None:
    result = chain(t.square.s(3), t.flaky.s(), t.square.s()).apply_async()
    worker = capp.worker()
    worker.run_until_idle()
    assert t.ran["flaky"] == 1
    assert capp.chain_result(result.id).current == 1  # still waiting on its retry
    clock.advance(10.0)
    worker.run_until_idle()
    clock.advance(20.0)
    worker.run_until_idle()
    assert t.ran["flaky"] == 3
    with pytest.raises(TaskFailed) as failure:
        result.get(timeout=0)
    assert failure.value.task_id == result.steps[1].id
    assert failure.value.exc_type == "ConnectionError"
    assert result.steps[2].status is TaskStatus.CANCELLED
    assert t.ran["square"] == 1


def test_a_cancelled_step_cancels_its_chain(
    capp: App, clock: FakeClock, t: SimpleNamespace
) -> None:
    result = chain(t.square.s(2), t.square.s().set(queue="later"), t.square.s()).apply_async()
    capp.worker(queues=["default"]).run_until_idle()  # step 1 is now queued on "later"
    assert result.steps[1].status is TaskStatus.QUEUED
    step = result.steps[1]
    assert isinstance(step, AsyncResult)
    assert step.cancel()
    # The worker that takes the cancelled step skips it and stops the chain.
    capp.worker(queues=["default", "later"]).run_until_idle()
    with pytest.raises(TaskCancelled) as cancelled:
        result.get(timeout=0)
    assert cancelled.value.task_id == result.steps[1].id
    assert result.steps[2].status is TaskStatus.CANCELLED
    assert t.ran["square"] == 1


def test_a_step_no_worker_knows_fails_its_chain(capp: App, t: SimpleNamespace) -> None:
    result = chain(t.square.s(2), Signature(capp, "no.such.task")).apply_async()
    capp.worker().run_until_idle()
    with pytest.raises(TaskFailed) as failure:
        result.get(timeout=0)
    assert failure.value.exc_type.endswith("NotRegistered")


def test_typed_values_cross_the_canvas_with_their_types(capp: App, t: SimpleNamespace) -> None:
    result = chain(t.invoice.s(9), t.due_day.s(extra=1)).apply_async()
    inner = chord([t.invoice.s(1), t.invoice.s(2)], t.total.si([1, 2])).apply_async()
    capp.worker().run_until_idle()
    assert result.get(timeout=0) == 10
    assert inner.header.get(timeout=0) == [
        Invoice(1, date(2024, 1, 1)),
        Invoice(2, date(2024, 1, 2)),
    ]


def test_a_previous_value_that_does_not_fit_fails_the_next_step_with_payload_error(
    capp: App, t: SimpleNamespace
) -> None:
    result = chain(t.invoice.s(3), t.square.s()).apply_async()
    capp.worker().run_until_idle()
    with pytest.raises(TaskFailed) as failure:
        result.get(timeout=0)
    assert failure.value.task_id == result.steps[1].id
    assert failure.value.exc_type.endswith("PayloadError")


def test_arguments_that_cannot_wait_inside_a_canvas_are_rejected_when_applied(
    capp: App, t: SimpleNamespace
) -> None:
    with pytest.raises(PayloadError, match="due_day"):
        chain(t.square.s(1), t.due_day.si(Invoice(1, date(2024, 1, 1)))).apply_async()


def test_arguments_no_parent_value_could_mend_are_rejected_when_applied(
    capp: App, t: SimpleNamespace
) -> None:
    # A keyword the task does not take, or more positional arguments than it has, was sent
    # and failed on the worker; ``square.s(2, pow=3).delay()`` was refused at once.
    cases = [
        (lambda: group(t.square.s(2, pow=3)), "square: got an unexpected keyword argument 'pow'"),
        (lambda: chain(t.square.s(2), t.due_day.s(days=1)), "due_day: got an unexpected keyword"),
        (lambda: chain(t.square.s(2), t.square.s(1, 2)), "square: takes 1 positional argument"),
        (lambda: chord([t.square.s(1)], t.total.s(1, 2)), "total: takes 1 positional argument"),
        (lambda: t.square.s(2).set(link=t.total.s(x=1)), "total: got an unexpected keyword"),
    ]
    for make, message in cases:
        with pytest.raises(PayloadError, match=message):
            make().apply_async()
    assert capp.kernel.call(capp.broker.depth("default"))["ready"] == 0
    # What a parent's value completes is still sent: due_day gets the invoice first.
    result = chain(t.invoice.s(2), t.due_day.s(extra=1)).apply_async()
    capp.worker().run_until_idle()
    assert result.get(timeout=0) == 3


def test_canvas_records_expire_with_the_result_ttl(
    capp: App, clock: FakeClock, t: SimpleNamespace
) -> None:
    result = chord([t.square.s(i) for i in range(3)], t.total.s()).apply_async()
    capp.worker().run_until_idle()
    assert capp.chain_result(result.id).get(timeout=0) == 5
    assert capp.group_result(result.header.id).statuses()
    clock.advance(601.0)
    with pytest.raises(NotFound):
        capp.chain_result(result.id)
    with pytest.raises(NotFound):
        capp.group_result(result.header.id)
    slot = capp.kernel.call(capp.results.get(f"{result.header.id}:0"))
    assert slot is None


def test_a_group_of_a_thousand_is_one_publish(capp: App, t: SimpleNamespace) -> None:
    broker = capp.broker
    calls: list[int] = []
    real = broker.publish

    async def publish(messages: Any) -> None:
        calls.append(len(messages))
        await real(messages)

    broker.publish = publish  # type: ignore[method-assign]
    result = group(t.square.s(i) for i in range(1000)).apply_async()
    assert calls == [1000]
    capp.worker(concurrency=16).run_until_idle()
    assert result.get(timeout=0)[-1] == 999 * 999


def test_an_empty_group_is_done_at_once_and_feeds_an_empty_list(
    capp: App, t: SimpleNamespace
) -> None:
    assert group([]).apply_async(app=capp).get(timeout=0) == []
    result = chain(group([]), t.total.s()).apply_async()
    capp.worker().run_until_idle()
    assert result.get(timeout=0) == 0


def test_signatures_compose_with_the_pipe_operator(t: SimpleNamespace) -> None:
    composed = t.square.s(2) | t.square.s() | group(t.square.s(), t.square.s())
    assert isinstance(composed, chain)
    assert len(composed.steps) == 3
    with pytest.raises(TypeError):
        chain(t.square.s(1), 42)
    with pytest.raises(ValueError):
        chain()
