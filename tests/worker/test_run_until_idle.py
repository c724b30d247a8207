"""Worker behaviour through the ``run_until_idle`` seam on a fake clock: no real waiting."""

from __future__ import annotations

import asyncio
import dataclasses
import enum
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any
from uuid import UUID, uuid4

import pytest

from taskflow import (
    App,
    FakeClock,
    Middleware,
    NotFound,
    Reject,
    ResultTimeout,
    Retry,
    TaskCancelled,
    TaskContext,
    TaskEvent,
    TaskFailed,
    TaskStatus,
    current_task,
)
from taskflow.brokers import Message
from taskflow.codec import encode_envelope
from taskflow.errors import ConfigError
from taskflow.message import Envelope
from taskflow.middleware import ExecuteNext
from taskflow.results import MemoryResultStore


class Colour(enum.Enum):
    RED = "red"
    BLUE = "blue"


@dataclasses.dataclass
class Order:
    id: UUID
    total: Decimal
    placed: datetime
    colours: list[Colour]


@dataclasses.dataclass
class Receipt:
    order: Order
    lines: dict[str, int]


def dead(app: App, queue: str = "default") -> list[Any]:
    return app.kernel.call(app.broker.dead_letters(queue))


def depth(app: App, queue: str = "default") -> dict[str, int]:
    return app.kernel.call(app.broker.depth(queue))


# -- ordering --------------------------------------------------------------------------
def test_a_concurrency_one_worker_runs_by_priority_then_fifo(fake_app: App) -> None:
    ran: list[int] = []

    @fake_app.task
    def job(n: int) -> None:
        ran.append(n)

    for n in range(6):
        job.apply_async((n,), priority=9 if n in (2, 4) else 0)
    assert fake_app.worker(concurrency=1).run_until_idle() == 6
    assert ran == [2, 4, 0, 1, 3, 5]


def test_weighted_fair_share_between_backlogged_queues(clock: FakeClock) -> None:
    with App("fair", clock=clock, queue_weights={"critical": 6, "bulk": 1}) as app:
        ran: list[str] = []

        @app.task
        def job(queue: str) -> None:
            ran.append(queue)

        for _ in range(20):
            job.apply_async(("bulk",), queue="bulk")
            job.apply_async(("critical",), queue="critical")
        app.worker(["critical", "bulk"], concurrency=1).run_until_idle()
    first = ran[:14]
    assert 11 <= first.count("critical") <= 13, first
    assert "bulk" in first[:8], first
    assert len(ran) == 40


# -- results and the AsyncResult API ---------------------------------------------------
def test_forget_refuses_a_task_that_has_not_finished(fake_app: App) -> None:
    # Forgotten while queued, its record came back when it ran, without its created_at.
    @fake_app.task
    def add(x: int, y: int) -> int:
        return x + y

    queued, later = add.delay(1, 2), add.apply_async((3, 4), countdown=60)
    for handle, status in [(queued, "queued"), (later, "scheduled")]:
        with pytest.raises(ConfigError, match=rf"task {handle.id} is {status}: forget\(\)"):
            handle.forget()
    fake_app.worker().run_until_idle()
    assert queued.info().created_at is not None
    queued.forget()
    assert queued.status is TaskStatus.PENDING
    queued.forget()  # nothing left: nothing to do
    assert later.cancel()
    later.forget()
    assert later.status is TaskStatus.PENDING


def test_async_result_reports_a_success(fake_app: App) -> None:
    @fake_app.task
    def add(x: int, y: int) -> int:
        return x + y

    result = add.delay(2, 3)
    assert (result.status, result.ready()) == (TaskStatus.QUEUED, False)
    fake_app.worker().run_until_idle()
    assert result.status is TaskStatus.SUCCEEDED
    assert result.ready() and result.successful() and not result.failed()
    assert result.get(timeout=1) == 5
    assert asyncio.run(result.aget(timeout=1)) == 5
    info = result.info()
    assert (info.id, info.name, info.status, info.queue, info.attempts, info.result) == (
        result.id,
        add.name,
        TaskStatus.SUCCEEDED,
        "default",
        1,
        5,
    )
    assert info.created_at is not None and info.finished_at is not None
    assert info.worker
    assert fake_app.get_task(result.id).status is TaskStatus.SUCCEEDED
    result.forget()
    assert result.status is TaskStatus.PENDING
    with pytest.raises(NotFound):
        result.info()


def test_a_failure_carries_type_message_and_traceback(fake_app: App) -> None:
    @fake_app.task
    def boom(text: str) -> None:
        raise LookupError(f"no {text}")

    result = boom.delay("thing")
    fake_app.worker().run_until_idle()
    assert result.failed() and result.ready() and not result.successful()
    with pytest.raises(TaskFailed) as info:
        result.get(timeout=1)
    failure = info.value
    assert (failure.task_id, failure.exc_type, failure.message) == (
        result.id,
        "LookupError",
        "no thing",
    )
    assert "raise LookupError" in failure.traceback
    assert isinstance(result.get(timeout=1, propagate=False), TaskFailed)
    assert result.info().error is not None
    assert len(dead(fake_app)) == 1


def test_waiting_too_long_raises_result_timeout_a_timeout_error(fake_app: App) -> None:
    @fake_app.task
    def job() -> None: ...

    result = job.delay()
    with pytest.raises(ResultTimeout) as info:
        result.get(timeout=0.01)
    assert isinstance(info.value, TimeoutError)
    with pytest.raises(TimeoutError):
        asyncio.run(result.aget(timeout=0.01))


def test_typed_payloads_round_trip_through_the_worker(fake_app: App) -> None:
    seen: list[Any] = []

    @fake_app.task
    def checkout(order: Order, when: datetime, ids: set[UUID]) -> Receipt:
        seen.extend([order, when, ids])
        return Receipt(order, {c.value: 1 for c in order.colours})

    order = Order(
        uuid4(), Decimal("12.50"), datetime(2024, 5, 1, 12, tzinfo=UTC), [Colour.RED, Colour.BLUE]
    )
    stamp = datetime(2024, 5, 2, tzinfo=UTC)
    result = checkout.delay(order, stamp, {order.id})
    fake_app.worker().run_until_idle()
    receipt = result.get(timeout=1)
    assert seen == [order, stamp, {order.id}]
    assert isinstance(seen[0], Order) and isinstance(seen[0].total, Decimal)
    assert receipt == Receipt(order, {"red": 1, "blue": 1})
    assert isinstance(receipt, Receipt) and isinstance(receipt.order.id, UUID)
    assert result.info().result == receipt


def test_a_bad_return_value_fails_the_task_with_payload_error(fake_app: App) -> None:
    @fake_app.task
    def wrong() -> int:
        return "not an int"  # type: ignore[return-value]

    result = wrong.delay()
    fake_app.worker().run_until_idle()
    with pytest.raises(TaskFailed, match="PayloadError"):
        result.get(timeout=1)


def test_a_fire_and_forget_task_stores_nothing_but_still_runs(fake_app: App) -> None:
    ran: list[int] = []

    @fake_app.task(store_result=False)
    def job(n: int) -> None:
        ran.append(n)

    result = job.delay(1)
    assert result.status is TaskStatus.PENDING
    assert fake_app.worker().run_until_idle() == 1
    assert ran == [1] and result.status is TaskStatus.PENDING


def test_terminal_results_expire_after_result_ttl(clock: FakeClock) -> None:
    with App("ttl", clock=clock, result_ttl=60.0) as app:

        @app.task
        def job() -> int:
            return 1

        result = job.delay()
        clock.advance(3600)  # a queued record has no ttl
        assert result.status is TaskStatus.QUEUED
        app.worker().run_until_idle()
        clock.advance(59)
        assert result.get(timeout=1) == 1
        clock.advance(2)
        assert result.status is TaskStatus.PENDING


def test_the_memory_store_keeps_at_most_max_entries_terminal_records(
    clock: FakeClock,
) -> None:
    store = MemoryResultStore(max_entries=3, clock=clock)
    with App("bounded", results=store, clock=clock) as app:

        @app.task
        def job(n: int) -> int:
            return n

        results = [job.delay(n) for n in range(5)]
        assert len(store) == 5  # live records are never evicted
        app.worker(concurrency=1).run_until_idle()
        assert len(store) == 3
        assert [r.status for r in results[:2]] == [TaskStatus.PENDING] * 2
        assert [r.get(timeout=1) for r in results[2:]] == [2, 3, 4]


# -- retries ---------------------------------------------------------------------------
def test_retries_back_off_exponentially_on_the_fake_clock(fake_app: App, clock: FakeClock) -> None:
    attempts: list[int] = []

    @fake_app.task(bind=True, retries=3, retry_backoff=2.0, retry_jitter=False)
    def flaky(ctx: TaskContext) -> str:
        attempts.append(ctx.attempt)
        if ctx.attempt < 4:
            raise ConnectionError("down")
        return "ok"

    result = flaky.delay()
    worker = fake_app.worker()
    assert worker.run_until_idle() == 1
    assert result.status is TaskStatus.RETRYING
    assert depth(fake_app)["scheduled"] == 1
    for delay in (2.0, 4.0, 8.0):
        clock.advance(delay - 0.01)
        assert worker.run_until_idle() == 0
        clock.advance(0.01)
        assert worker.run_until_idle() == 1
    assert attempts == [1, 2, 3, 4]
    assert result.get(timeout=1) == "ok"
    assert result.info().attempts == 4


def test_retries_are_exhausted_then_the_task_fails(fake_app: App, clock: FakeClock) -> None:
    @fake_app.task(retries=2, retry_backoff=0.0)
    def broken() -> None:
        raise ValueError("always")

    result = broken.delay()
    fake_app.worker().run_until_idle()
    with pytest.raises(TaskFailed, match="always"):
        result.get(timeout=1)
    assert result.info().attempts == 3
    [letter] = dead(fake_app)
    assert letter.reason == "failed"


def test_only_exceptions_in_retry_on_are_retried(fake_app: App) -> None:
    calls: list[str] = []

    @fake_app.task(retries=5, retry_backoff=0.0, retry_on=(ConnectionError,))
    def picky(kind: str) -> None:
        calls.append(kind)
        raise (ConnectionError if kind == "conn" else KeyError)(kind)

    fake_app.worker().run_until_idle()  # nothing yet
    a, b = picky.delay("conn"), picky.delay("key")
    fake_app.worker().run_until_idle()
    assert calls.count("conn") == 6 and calls.count("key") == 1
    assert a.failed() and b.failed()


def test_retry_and_reject_steer_the_worker(fake_app: App, clock: FakeClock) -> None:
    @fake_app.task(bind=True, retries=1)
    def again(ctx: TaskContext) -> int:
        if ctx.attempt == 1:
            raise ctx.retry(countdown=30)
        return ctx.attempt

    @fake_app.task(retries=5)
    def refuse() -> None:
        raise Reject("bad input")

    @fake_app.task(retries=0)
    def no_budget() -> None:
        raise Retry(countdown=1)

    a, b, c = again.delay(), refuse.delay(), no_budget.delay()
    worker = fake_app.worker()
    worker.run_until_idle()
    assert a.status is TaskStatus.RETRYING and b.failed() and c.failed()
    assert b.info().attempts == 1
    assert {d.reason for d in dead(fake_app)} == {"rejected", "failed"}
    clock.advance(30)
    worker.run_until_idle()
    assert a.get(timeout=1) == 2


# -- time: countdown, eta, expires -------------------------------------------------------
def test_countdown_and_eta_wait_in_the_broker_until_due(fake_app: App, clock: FakeClock) -> None:
    @fake_app.task
    def job(n: int) -> int:
        return n

    later = job.apply_async((1,), countdown=10)
    at = job.apply_async((2,), eta=datetime.fromtimestamp(clock.time() + 20, tz=UTC))
    worker = fake_app.worker()
    assert worker.run_until_idle() == 0
    assert later.status is TaskStatus.SCHEDULED
    clock.advance(10)
    assert worker.run_until_idle() == 1
    assert later.get(timeout=1) == 1 and at.status is TaskStatus.SCHEDULED
    clock.advance(10)
    assert worker.run_until_idle() == 1
    assert at.get(timeout=1) == 2


def test_an_expired_task_never_runs(fake_app: App, clock: FakeClock) -> None:
    ran: list[int] = []

    @fake_app.task
    def job(n: int) -> None:
        ran.append(n)

    stale = job.apply_async((1,), expires=5)
    fresh = job.apply_async((2,), expires=datetime.fromtimestamp(clock.time() + 60, tz=UTC))
    clock.advance(6)
    fake_app.worker().run_until_idle()
    assert ran == [2]
    assert stale.status is TaskStatus.EXPIRED and fresh.successful()
    with pytest.raises(TaskCancelled, match="expired"):
        stale.get(timeout=1)


# -- cancellation ----------------------------------------------------------------------
def test_a_cancelled_queued_task_never_runs(fake_app: App) -> None:
    ran: list[int] = []

    @fake_app.task
    def job(n: int) -> None:
        ran.append(n)

    doomed, kept = job.delay(1), job.delay(2)
    later = job.apply_async((3,), countdown=60)
    assert doomed.cancel() is True
    assert later.cancel() is True
    assert depth(fake_app)["ready"] == 1
    fake_app.worker().run_until_idle()
    assert ran == [2]
    assert doomed.status is TaskStatus.CANCELLED and later.status is TaskStatus.CANCELLED
    with pytest.raises(TaskCancelled):
        doomed.get(timeout=1)
    assert doomed.cancel() is False and kept.cancel() is False  # terminal already


# -- idempotency across a run ----------------------------------------------------------
def test_an_idempotent_task_runs_once(fake_app: App) -> None:
    ran: list[str] = []

    @fake_app.task
    def charge(order: str) -> None:
        ran.append(order)

    first = charge.apply_async(("o-1",), idempotency_key="o-1")
    fake_app.worker().run_until_idle()
    again = charge.apply_async(("o-1",), idempotency_key="o-1")
    fake_app.worker().run_until_idle()
    assert ran == ["o-1"] and again.id == first.id and again.successful()


# -- context ---------------------------------------------------------------------------
def test_a_bound_task_sees_its_context_and_current_task(fake_app: App, clock: FakeClock) -> None:
    seen: dict[str, Any] = {}

    @fake_app.task(bind=True, queue="work", retries=2, timeout=30.0)
    def job(ctx: TaskContext, n: int) -> int:
        seen.update(
            id=ctx.id,
            name=ctx.name,
            attempt=ctx.attempt,
            retries=ctx.retries,
            queue=ctx.queue,
            priority=ctx.priority,
            headers=ctx.headers,
            deadline=ctx.deadline,
            cancelled=ctx.cancelled.is_set(),
            current=current_task() is ctx,
        )
        return n

    @fake_app.task
    async def coro() -> bool:
        ctx = current_task()
        return ctx is not None and ctx.name == coro.name

    result = job.apply_async((1,), priority=6, headers={"tenant": "t1"})
    other = coro.delay()
    assert current_task() is None
    fake_app.worker(["work", "default"]).run_until_idle()
    assert result.get(timeout=1) == 1 and other.get(timeout=1) is True
    assert seen == {
        "id": result.id,
        "name": job.name,
        "attempt": 1,
        "retries": 2,
        "queue": "work",
        "priority": 6,
        "headers": {"tenant": "t1"},
        "deadline": clock.time() + 30.0,
        "cancelled": False,
        "current": True,
    }


# -- bad messages ----------------------------------------------------------------------
def test_an_unknown_task_name_is_dead_lettered_and_the_worker_goes_on(fake_app: App) -> None:
    @fake_app.task
    def job() -> str:
        return "fine"

    unknown = fake_app.send_task("nobody.knows", args=(1,))
    known = job.delay()
    assert fake_app.worker().run_until_idle() == 1
    assert known.get(timeout=1) == "fine"
    with pytest.raises(TaskFailed) as info:
        unknown.get(timeout=1)
    assert info.value.exc_type.endswith("NotRegistered")
    [letter] = dead(fake_app)
    assert (letter.id, letter.reason) == (unknown.id, "not_registered")


@pytest.mark.parametrize(
    "body",
    [
        b"\x00\xff garbage",
        b'{"v": 1, "id": "x"}',
        b'{"v": 42, "id": "x", "task": "t", "queue": "default"}',
    ],
)
def test_an_undecodable_envelope_is_dead_lettered(fake_app: App, body: bytes) -> None:
    @fake_app.task
    def job() -> str:
        return "fine"

    fake_app.kernel.call(fake_app.broker.publish([Message("raw-1", "default", body, 5)]))
    known = job.delay()
    fake_app.worker().run_until_idle()
    assert known.get(timeout=1) == "fine"
    [letter] = dead(fake_app)
    assert (letter.id, letter.reason, letter.body) == ("raw-1", "undecodable", body)


def test_arguments_that_do_not_decode_in_the_worker_fail_with_payload_error(
    fake_app: App,
) -> None:
    @fake_app.task
    def job(n: int) -> int:
        return n

    env = Envelope(id="bad-args", task=job.name, queue="default", args=["seven"])
    fake_app.kernel.call(
        fake_app.broker.publish([Message(env.id, "default", encode_envelope(env))])
    )
    fake_app.worker().run_until_idle()
    with pytest.raises(TaskFailed) as info:
        fake_app.result("bad-args").get(timeout=1)
    assert info.value.exc_type.endswith("PayloadError")
    assert [d.reason for d in dead(fake_app)] == ["payload"]


# -- hooks and middleware ----------------------------------------------------------------
def test_hooks_see_the_lifecycle_in_order(fake_app: App) -> None:
    seen: list[tuple[str, str, int]] = []
    for kind in ("start", "success", "failure", "retry", "finish"):
        fake_app.hook(kind)(lambda e: seen.append((e.kind, e.status, e.attempt)))

    @fake_app.task(retries=1, retry_backoff=0.0)
    def flaky() -> None:
        raise OSError("x")

    flaky.delay()
    fake_app.worker().run_until_idle()
    assert seen == [
        ("start", "running", 1),
        ("retry", "retrying", 1),
        ("start", "running", 2),
        ("failure", "failed", 2),
        ("finish", "failed", 2),
    ]


def test_raising_hooks_leave_the_task_succeeded(fake_app: App) -> None:
    calls: list[str] = []

    def explode(event: TaskEvent) -> None:
        calls.append(event.kind)
        raise RuntimeError("hook bug")

    async def explode_async(event: TaskEvent) -> None:
        calls.append(f"async-{event.kind}")
        raise RuntimeError("async hook bug")

    for kind in ("queued", "start", "success", "finish"):
        fake_app.hook(kind)(explode)
        fake_app.hook(kind)(explode_async)

    @fake_app.task(on_success=explode, on_start=explode)
    def job() -> int:
        return 7

    result = job.delay()
    fake_app.worker().run_until_idle()
    assert result.get(timeout=1) == 7 and result.status is TaskStatus.SUCCEEDED
    assert calls.count("success") == 2 and "async-finish" in calls


class Exploding(Middleware):
    def __init__(self, when: str) -> None:
        self.when = when
        self.calls = 0

    def enqueue(self, envelope: Envelope, call_next: Any) -> Envelope:
        if self.when == "before":
            raise RuntimeError("enqueue bug")
        out: Envelope = call_next(envelope)
        raise RuntimeError("enqueue bug after")
        return out  # pragma: no cover

    async def execute(self, ctx: TaskContext, call_next: ExecuteNext) -> Any:
        self.calls += 1
        if self.when == "before":
            raise RuntimeError("middleware bug")
        await call_next(ctx)
        raise RuntimeError("middleware bug after")


@pytest.mark.parametrize("when", ["before", "after"])
def test_raising_middleware_changes_no_outcome(fake_app: App, when: str) -> None:
    runs: list[int] = []
    middleware = Exploding(when)
    fake_app.add_middleware(middleware)

    @fake_app.task
    def ok(n: int) -> int:
        runs.append(n)
        return n * 2

    @fake_app.task
    def bad() -> None:
        raise KeyError("task bug")

    good, failing = ok.delay(4), bad.delay()
    fake_app.worker().run_until_idle()
    assert good.get(timeout=1) == 8 and runs == [4]  # ran exactly once
    with pytest.raises(TaskFailed) as info:
        failing.get(timeout=1)
    assert info.value.exc_type == "KeyError"
    assert middleware.calls == 2


def test_an_async_enqueue_middleware_is_refused_when_added(fake_app: App) -> None:
    # Its coroutine was taken for the envelope: every send then failed with
    # "'coroutine' object has no attribute 'queue'".
    class Stamp(Middleware):
        async def enqueue(self, envelope: Envelope, call_next: Any) -> Envelope:  # type: ignore[override]
            return call_next(envelope)  # type: ignore[no-any-return]

    with pytest.raises(TypeError, match=r"Stamp\.enqueue must be a plain function"):
        fake_app.add_middleware(Stamp())
    with pytest.raises(TypeError, match=r"must be an instance: add_middleware\(Middleware\(\)\)"):
        fake_app.add_middleware(Middleware)  # type: ignore[arg-type]

    @fake_app.task
    def job() -> int:
        return 1

    result = job.delay()
    fake_app.worker().run_until_idle()
    assert result.get(timeout=1) == 1


def test_an_enqueue_middleware_that_returns_no_envelope_is_logged_and_skipped(
    fake_app: App, caplog: pytest.LogCaptureFixture
) -> None:
    # A missing ``return``: every send failed with "'NoneType' object has no attribute
    # 'queue'". Now it is skipped like one that raises, and what the chain after it made
    # of the envelope is sent.
    class Forgot(Middleware):
        def enqueue(self, envelope: Envelope, call_next: Any) -> Envelope:
            call_next(envelope)
            return None  # type: ignore[return-value]

    class Tenant(Middleware):
        def enqueue(self, envelope: Envelope, call_next: Any) -> Envelope:
            envelope.headers["tenant"] = "acme"
            return call_next(envelope)  # type: ignore[no-any-return]

    fake_app.add_middleware(Forgot())
    fake_app.add_middleware(Tenant())

    @fake_app.task(bind=True)
    def job(ctx: Any) -> str:
        return str(ctx.headers["tenant"])

    with caplog.at_level("ERROR", logger="taskflow.middleware"):
        sent = [job.delay(), *fake_app.enqueue_many([job.s()])]
    fake_app.worker().run_until_idle()
    assert [r.get(timeout=1) for r in sent] == ["acme", "acme"]
    assert (
        caplog.messages
        == [
            "middleware Forgot: enqueue returned NoneType, not the envelope "
            "(return call_next(envelope)); ignored"
        ]
        * 2
    )


def test_middleware_wraps_execution_and_may_change_the_value(fake_app: App) -> None:
    order: list[str] = []

    class Trace(Middleware):
        def __init__(self, name: str) -> None:
            self.name = name

        async def execute(self, ctx: TaskContext, call_next: ExecuteNext) -> Any:
            order.append(f"{self.name}>")
            value = await call_next(ctx)
            order.append(f"<{self.name}")
            return value + 1

    fake_app.add_middleware(Trace("outer"))
    fake_app.add_middleware(Trace("inner"))

    @fake_app.task
    def job() -> int:
        order.append("task")
        return 1

    result = job.delay()
    fake_app.worker().run_until_idle()
    assert result.get(timeout=1) == 3
    assert order == ["outer>", "inner>", "task", "<inner", "<outer"]


# -- subscriptions ---------------------------------------------------------------------
def test_every_subscriber_gets_every_finish_event(fake_app: App) -> None:
    @fake_app.task
    def job(n: int) -> int:
        return n

    worker = fake_app.worker(concurrency=1)
    first, second = worker.subscribe(buffer=10), worker.subscribe(buffer=10)
    results = [job.delay(n) for n in range(3)]
    worker.run_until_idle()
    for sub in (first, second):
        events = [sub.get(timeout=1) for _ in range(3)]
        assert [e.task_id for e in events] == [r.id for r in results]
        assert {(e.kind, e.status) for e in events} == {("finish", "succeeded")}
        assert [e.result for e in events] == [0, 1, 2]
        assert sub.dropped == 0


@pytest.mark.parametrize(("drop", "kept"), [("newest", [0, 1, 2]), ("oldest", [3, 4, 5])])
def test_a_full_buffer_drops_by_policy_and_counts(
    fake_app: App, drop: str, kept: list[int]
) -> None:
    @fake_app.task
    def job(n: int) -> int:
        return n

    worker = fake_app.worker(concurrency=1)
    sub = worker.subscribe(buffer=3, drop=drop)
    for n in range(6):
        job.delay(n)
    worker.run_until_idle()
    assert [sub.get(timeout=1).result for _ in range(3)] == kept
    assert sub.dropped == 3
    with pytest.raises(TimeoutError):
        sub.get(timeout=0.01)


def test_a_subscription_outlives_run_until_idle_calls(fake_app: App, clock: FakeClock) -> None:
    @fake_app.task(retries=1, retry_backoff=5.0, retry_jitter=False, bind=True)
    def flaky(ctx: TaskContext) -> int:
        if ctx.attempt == 1:
            raise OSError("once")
        return ctx.attempt

    worker = fake_app.worker()
    sub = worker.subscribe()
    flaky.delay()
    worker.run_until_idle()
    clock.advance(5)
    worker.run_until_idle()
    event = sub.get(timeout=1)
    assert (event.kind, event.status, event.result) == ("finish", "succeeded", 2)


def test_subscribe_refuses_a_bad_buffer_or_policy(fake_app: App) -> None:
    worker = fake_app.worker()
    with pytest.raises(ValueError, match="buffer"):
        worker.subscribe(buffer=0)
    with pytest.raises(ValueError, match="drop"):
        worker.subscribe(drop="random")


# -- rate limit with the fake clock ------------------------------------------------------
def test_a_rate_limited_task_waits_for_tokens(fake_app: App, clock: FakeClock) -> None:
    @fake_app.task(rate_limit="2/s", rate_burst=2)
    def job(n: int) -> None: ...

    for n in range(5):
        job.delay(n)
    worker = fake_app.worker(concurrency=4)
    assert worker.run_until_idle() == 2
    assert depth(fake_app)["ready"] == 3  # the held ones went back uncounted
    clock.advance(0.5)
    assert worker.run_until_idle() == 1


# -- worker arguments ------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs", [{"concurrency": 0}, {"concurrency": True}, {"prefetch_buffer": -1}, {"queues": [""]}]
)
def test_bad_worker_arguments_are_value_errors(fake_app: App, kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="worker"):
        fake_app.worker(**kwargs)


def test_stats_count_outcomes(fake_app: App) -> None:
    @fake_app.task
    def job(fail: bool) -> None:
        if fail:
            raise ValueError

    job.delay(False)
    job.delay(True)
    worker = fake_app.worker()
    worker.run_until_idle()
    stats = worker.stats()
    assert (stats["processed"], stats["succeeded"], stats["failed"]) == (2, 1, 1)
    assert stats["queues"]["default"]["dead"] == 1


def test_send_task_and_enqueue_many_run_and_decode_typed_results(fake_app: App) -> None:
    @fake_app.task(name="shop.total")
    def total(prices: list[Decimal]) -> Decimal:
        return sum(prices, Decimal(0))

    by_name = fake_app.send_task("shop.total", args=([Decimal("1.10"), Decimal("2.20")],))
    batch = fake_app.enqueue_many([total.s([Decimal(n)]) for n in range(3)])
    fake_app.worker().run_until_idle()
    assert by_name.get(timeout=1) == Decimal("3.30")
    assert [r.get(timeout=1) for r in batch] == [Decimal(0), Decimal(1), Decimal(2)]


def test_cancel_all_cancels_what_a_worker_holds(fake_app: App) -> None:
    @fake_app.task
    def job() -> None: ...

    worker = fake_app.worker()
    assert worker.cancel_all() == 0
    result = job.delay()
    assert worker.cancel(result.id) is True
    worker.run_until_idle()
    assert result.status is TaskStatus.CANCELLED


def test_a_task_waiting_to_retry_can_be_cancelled(fake_app: App, clock: FakeClock) -> None:
    runs: list[int] = []

    @fake_app.task(retries=3, retry_backoff=10.0, retry_jitter=False)
    def flaky() -> None:
        runs.append(1)
        raise OSError("down")

    result = flaky.delay()
    worker = fake_app.worker()
    worker.run_until_idle()
    assert result.status is TaskStatus.RETRYING
    assert result.cancel() is True
    clock.advance(60)
    worker.run_until_idle()
    assert runs == [1] and result.status is TaskStatus.CANCELLED
    assert depth(fake_app)["scheduled"] == 0
    assert fake_app.result("no-such-task").cancel() is False
