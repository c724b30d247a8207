"""A started worker in real time: priorities, rate limits, timeouts, cancellation, shutdown.

Everything synchronizes on results, hooks and events; nothing sleeps.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import orjson
import pytest

from taskflow import (
    App,
    ResultTimeout,
    TaskCancelled,
    TaskContext,
    TaskEvent,
    TaskFailed,
    TaskStatus,
)
from taskflow.brokers import MemoryBroker, Message
from taskflow.codec import encode_envelope
from taskflow.message import Envelope

WAIT = 10.0


def started_signal(app: App) -> queue.Queue[str]:
    """A queue that receives the id of every task as it starts."""
    starts: queue.Queue[str] = queue.Queue()
    app.hook("start")(lambda event: starts.put(event.task_id))
    return starts


def depth(app: App, q: str = "default") -> dict[str, int]:
    return app.kernel.call(app.broker.depth(q))


def test_late_high_priority_tasks_run_before_an_earlier_backlog(app: App) -> None:
    ran: list[int] = []

    @app.task
    def job(priority: int) -> None:
        ran.append(priority)

    low = [job.apply_async((0,), priority=0) for _ in range(20)]
    high = [job.apply_async((9,), priority=9) for _ in range(5)]
    with app.worker(concurrency=1):
        for result in low + high:
            result.get(timeout=WAIT)
    assert ran[:5] == [9] * 5
    assert ran[5:] == [0] * 20


def test_a_20_per_second_rate_limit_spreads_40_tasks_over_at_least_1_5_s(app: App) -> None:
    @app.task(rate_limit="20/s")
    def job(n: int) -> int:
        return n

    results = [job.delay(n) for n in range(40)]
    began = time.monotonic()
    with app.worker(concurrency=4):
        assert [r.get(timeout=WAIT) for r in results] == list(range(40))
        took = time.monotonic() - began
    assert 1.5 <= took < 5.0


def test_a_running_coroutine_is_cancelled_within_2_seconds(app: App) -> None:
    starts = started_signal(app)

    @app.task
    async def forever() -> None:
        await asyncio.Event().wait()

    result = forever.delay()
    with app.worker(concurrency=2):
        assert starts.get(timeout=WAIT) == result.id
        began = time.monotonic()
        assert result.cancel() is True
        with pytest.raises(TaskCancelled):
            result.get(timeout=WAIT)
        assert time.monotonic() - began < 2.0
    assert result.status is TaskStatus.CANCELLED
    assert depth(app)["inflight"] == 0 and depth(app)["dead"] == 0


def test_a_running_sync_task_sees_ctx_cancelled(app: App) -> None:
    running: queue.Queue[str] = queue.Queue()
    saw: queue.Queue[bool] = queue.Queue()

    @app.task(bind=True)
    def patient(ctx: TaskContext) -> None:
        running.put(ctx.id)  # in its thread: the body runs
        try:
            ctx.cancelled.wait(WAIT)
        finally:
            saw.put(ctx.cancelled.is_set())

    result = patient.delay()
    with app.worker(concurrency=1) as worker:
        assert running.get(timeout=WAIT) == result.id
        assert worker.cancel(result.id) is True
        assert saw.get(timeout=WAIT) is True
        with pytest.raises(TaskCancelled):
            result.get(timeout=WAIT)


def test_a_timed_out_coroutine_fails_with_task_timeout_after_its_retries(app: App) -> None:
    attempts: list[int] = []

    @app.task(bind=True, timeout=0.2, retries=1, retry_backoff=0.0)
    async def stuck(ctx: TaskContext) -> None:
        attempts.append(ctx.attempt)
        await asyncio.Event().wait()

    result = stuck.delay()
    with app.worker():
        with pytest.raises(TaskFailed) as info:
            result.get(timeout=WAIT)
    assert info.value.exc_type.endswith("TaskTimeout")
    assert attempts == [1, 2] and result.info().attempts == 2


def test_a_timed_out_sync_task_fails_with_task_timeout_and_sees_ctx_cancelled(app: App) -> None:
    saw: list[bool] = []

    @app.task(bind=True, timeout=0.2)
    def stuck(ctx: TaskContext) -> None:
        try:
            ctx.cancelled.wait(WAIT)
        finally:
            saw.append(ctx.cancelled.is_set())

    @app.task(bind=True, timeout=0.2, retries=1, retry_backoff=0.0)
    def stuck_twice(ctx: TaskContext) -> None:
        ctx.cancelled.wait(WAIT)

    once, twice = stuck.delay(), stuck_twice.delay()
    with app.worker(concurrency=2):
        for result in (once, twice):
            with pytest.raises(TaskFailed) as info:
                result.get(timeout=WAIT)
            assert info.value.exc_type.endswith("TaskTimeout")
    assert saw == [True]
    assert twice.info().attempts == 2


def test_concurrent_stop_and_stop_now_raise_nothing_and_leak_nothing(app: App) -> None:
    starts = started_signal(app)

    @app.task
    async def forever() -> None:
        await asyncio.Event().wait()

    @app.task(bind=True)
    def patient(ctx: TaskContext) -> None:
        ctx.cancelled.wait(WAIT)

    worker = app.worker(concurrency=2).start()
    forever.delay()
    patient.delay()
    starts.get(timeout=WAIT)
    starts.get(timeout=WAIT)
    barrier = threading.Barrier(6)
    errors: list[BaseException] = []

    def call(fn: Callable[[], None]) -> None:
        barrier.wait()
        try:
            fn()
        except BaseException as exc:  # noqa: BLE001 - the test reports every one
            errors.append(exc)

    threads = [threading.Thread(target=call, args=(worker.stop,)) for _ in range(4)]
    threads += [threading.Thread(target=call, args=(worker.stop_now,)) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    worker.stop()
    worker.stop_now()
    assert worker.stats()["state"] == "stopped"


def test_stop_before_start_and_stop_twice_are_harmless(app: App) -> None:
    idle = app.worker()
    idle.stop()
    idle.stop_now()
    worker = app.worker().start()
    worker.stop(timeout=1)
    worker.stop(timeout=1)


class RecordingBroker(MemoryBroker):
    """A memory broker that reports each hand-back (uncounted requeue)."""

    def __init__(self) -> None:
        super().__init__()
        self.handed_back: queue.Queue[str] = queue.Queue()

    def _settle(self, mid: str, token: int, action: str, **kw: Any) -> bool:
        done = super()._settle(mid, token, action, **kw)
        if done and action == "requeue":
            self.handed_back.put(mid)
        return done


def test_graceful_stop_finishes_running_work_and_hands_back_the_rest() -> None:
    broker = RecordingBroker()
    with App("graceful", broker=broker) as app:
        starts = started_signal(app)
        gate = threading.Event()
        ran: list[int] = []

        @app.task
        def job(n: int) -> int:
            if n == 0:
                gate.wait(WAIT)
            ran.append(n)
            return n

        first = job.apply_async((0,), priority=9)
        rest = [job.delay(n) for n in (1, 2, 3)]
        worker = app.worker(concurrency=1, prefetch_buffer=3).start()
        assert starts.get(timeout=WAIT) == first.id
        stopper = threading.Thread(target=worker.stop, kwargs={"timeout": WAIT})
        stopper.start()
        handed = {broker.handed_back.get(timeout=WAIT) for _ in range(3)}
        assert handed == {r.id for r in rest}
        assert (depth(app)["ready"], depth(app)["inflight"]) == (3, 1)
        gate.set()
        stopper.join(WAIT)
        assert not stopper.is_alive()
        assert first.get(timeout=WAIT) == 0 and ran == [0]
        assert [r.status for r in rest] == [TaskStatus.QUEUED] * 3
        # Handing back spent neither an attempt nor a delivery.
        again = app.kernel.call(app.broker.fetch(["default"], 10, 0))
        assert sorted(d.delivery_count for d in again) == [1, 1, 1]
        for delivery in again:
            app.kernel.call(delivery.nack(requeue=True))
        app.worker(concurrency=1).run_until_idle()
        assert [r.get(timeout=WAIT) for r in rest] == [1, 2, 3]
        assert [r.info().attempts for r in rest] == [1, 1, 1]


def test_stop_now_cancels_running_work_and_a_new_worker_runs_it_again(app: App) -> None:
    starts = started_signal(app)
    runs: list[int] = []

    @app.task
    async def job() -> str:
        runs.append(len(runs))
        if len(runs) == 1:
            await asyncio.Event().wait()
        return "second run"

    result = job.delay()
    worker = app.worker().start()
    assert starts.get(timeout=WAIT) == result.id
    worker.stop_now()
    assert result.status is TaskStatus.QUEUED
    assert depth(app)["ready"] == 1
    with app.worker():
        assert result.get(timeout=WAIT) == "second run"
    assert runs == [0, 1]


def test_a_raising_hook_leaves_the_task_succeeded(app: App) -> None:
    def broken(event: TaskEvent) -> None:
        raise RuntimeError(f"hook bug in {event.kind}")

    for kind in ("start", "success", "finish"):
        app.hook(kind)(broken)

    @app.task(on_success=broken)
    def job() -> str:
        return "done"

    with app.worker():
        result = job.delay()
        assert result.get(timeout=WAIT) == "done"
        assert job.delay().get(timeout=WAIT) == "done"  # the worker is still alive
    assert result.status is TaskStatus.SUCCEEDED


def test_subscribers_fan_out_and_a_slow_one_never_blocks(app: App) -> None:
    @app.task
    def job(n: int) -> int:
        return n

    with app.worker(concurrency=2) as worker:
        slow = worker.subscribe(buffer=1)  # never read until the end
        first = worker.subscribe(buffer=100)
        second = worker.subscribe(buffer=100, drop="oldest")
        results = [job.delay(n) for n in range(20)]
        assert sorted(r.get(timeout=WAIT) for r in results) == list(range(20))
        got_first = [first.get(timeout=WAIT) for _ in range(20)]
        got_second = [second.get(timeout=WAIT) for _ in range(20)]
    ids = {r.id for r in results}
    assert {e.task_id for e in got_first} == ids == {e.task_id for e in got_second}
    assert all(e.kind == "finish" for e in got_first)
    assert slow.dropped == 19 and slow.get(timeout=1).kind == "finish"
    assert list(first) == []  # the worker stopped: iteration ends


def test_a_waiting_retry_does_not_hold_the_only_slot(app: App) -> None:
    order: list[str] = []
    retrying = threading.Event()
    app.hook("retry")(lambda event: retrying.set())

    @app.task(bind=True, retries=1, retry_backoff=0.5, retry_jitter=False)
    def flaky(ctx: TaskContext) -> None:
        order.append(f"flaky-{ctx.attempt}")
        if ctx.attempt == 1:
            raise ConnectionError("later")

    @app.task
    def other() -> None:
        order.append("other")

    with app.worker(concurrency=1):
        late = flaky.delay()
        assert retrying.wait(WAIT)
        began = time.monotonic()
        other.delay().get(timeout=WAIT)
        assert time.monotonic() - began < 0.5  # it did not wait for the backoff
        late.get(timeout=WAIT)
    assert order == ["flaky-1", "other", "flaky-2"]


def test_a_task_ended_before_its_body_frees_the_only_slot_for_the_next_at_once(
    app: App,
) -> None:
    """A job that ends without running its body (its arguments do not decode) holds its
    slot until its failure is written; as it lets go of its message, the next buffered
    task starts, rather than when the worker's next fetch comes back (here the broker has
    nothing more: that fetch waits out its 30 s poll)."""

    @app.task
    def job(n: int) -> int:
        return n

    env = Envelope(id="bad-args", task=job.name, queue="default", args=["seven"])
    app.kernel.call(app.broker.publish([Message(env.id, "default", encode_envelope(env))]))
    good = job.delay(7)  # behind it: both come in the worker's first fetch
    with app.worker(concurrency=1, poll_interval=30.0):
        began = time.monotonic()
        assert good.get(timeout=WAIT) == 7
        took = time.monotonic() - began
        with pytest.raises(TaskFailed) as info:
            app.result("bad-args").get(timeout=WAIT)
    assert info.value.exc_type.endswith("PayloadError")
    assert took < 5.0  # not the poll's 30 s


def test_the_worker_keeps_running_after_an_unknown_task(app: App) -> None:
    @app.task
    def job() -> str:
        return "fine"

    env = Envelope(id="ghost", task="nobody.knows", queue="default")
    with app.worker():
        app.kernel.call(app.broker.publish([Message("ghost", "default", encode_envelope(env))]))
        app.kernel.call(app.broker.publish([Message("junk", "default", b"{not json")]))
        assert job.delay().get(timeout=WAIT) == "fine"
        with pytest.raises(TaskFailed) as info:
            app.result("ghost").get(timeout=WAIT)
    assert info.value.exc_type.endswith("NotRegistered")
    reasons = {d.id: d.reason for d in app.kernel.call(app.broker.dead_letters("default"))}
    assert reasons == {"ghost": "not_registered", "junk": "undecodable"}


def test_an_id_with_a_control_character_is_dead_lettered_and_logged_escaped(
    app: App, caplog: pytest.LogCaptureFixture
) -> None:
    # Another producer's message: a newline in its id or name would forge a log line.
    @app.task
    def job() -> str:
        return "fine"

    forged = "x\n2026-01-01 ERROR forged line \x1b[2J"
    doc = {"v": 1, "id": forged, "task": "nobody\nknows", "queue": "default"}
    message = Message(forged, "default", orjson.dumps(doc))
    with caplog.at_level("INFO", logger="taskflow"), app.worker(concurrency=1):
        app.kernel.call(app.broker.publish([message]))
        assert job.delay().get(timeout=WAIT) == "fine"
        with pytest.raises(TaskFailed) as info:
            app.result(forged).get(timeout=WAIT)
    assert info.value.exc_type.endswith("EnvelopeError")
    reasons = {d.id: d.reason for d in app.kernel.call(app.broker.dead_letters("default"))}
    assert reasons == {forged: "undecodable"}
    lines = [r.getMessage() for r in caplog.records]
    assert not [line for line in lines if "\n" in line or "\x1b" in line]
    assert any("x\\n2026-01-01 ERROR forged line \\x1b[2J" in line for line in lines)


def test_a_wait_that_timed_out_inside_a_task_says_the_waiting_task_holds_its_slot(
    app: App,
) -> None:
    @app.task
    def child() -> int:
        return 1

    @app.task(name="shop.parent")
    def parent() -> int:
        return child.delay().get(timeout=0.2) + 1

    @app.task(name="shop.aparent")
    async def aparent() -> int:
        sent = await child.adelay()
        return await sent.aget(timeout=0.2) + 1

    with app.worker(concurrency=1):
        for waiting in (parent, aparent):
            with pytest.raises(TaskFailed) as info:
                waiting.delay().get(timeout=WAIT)
            assert info.value.exc_type.endswith("ResultTimeout")
            assert f"waited inside task {waiting.name}[{info.value.task_id}]" in (
                info.value.message
            )
            assert "holds its worker slot" in info.value.message
    with pytest.raises(ResultTimeout) as outside:
        app.result("nobody").get(timeout=0)
    assert "inside" not in str(outside.value)


def test_a_failure_message_is_logged_on_one_line_and_recorded_whole(
    app: App, caplog: pytest.LogCaptureFixture
) -> None:
    # An exception message often quotes what the task was given (a form field, say): in
    # the worker's log line its newline would forge a line.
    @app.task(name="shop.signup", retries=1, retry_backoff=0.0)
    def signup(email: str) -> None:
        raise ValueError(f"bad email {email!s}")

    sent = "x\n2026-01-01 00:00:00 INFO taskflow.worker admin logged in"
    with caplog.at_level("INFO", logger="taskflow"), app.worker(concurrency=1):
        with pytest.raises(TaskFailed) as info:
            signup.delay(sent).get(timeout=WAIT)
    assert info.value.message == f"bad email {sent}"
    lines = [r.getMessage() for r in caplog.records if "shop.signup[" in r.getMessage()]
    assert len(lines) == 2  # the retry and the failure
    assert all("\n" not in line and "bad email x\\n2026-01-01" in line for line in lines)


@pytest.mark.parametrize("countdown", [float("inf"), float("nan"), 1e300, "5"])
def test_a_retry_with_a_countdown_that_is_no_delay_fails_the_task_naming_it(
    app: App, countdown: Any
) -> None:
    # It used to be taken as given: an infinite or absurd one left the task retrying for
    # ever (and past the year 9999 no date could show it); NaN retried at once.
    from taskflow.errors import Retry

    @app.task(name="shop.poll", bind=True, retries=1, retry_on=())
    def poll(ctx: TaskContext) -> None:
        ctx.retry(countdown=countdown)

    @app.task(name="shop.poll_raw", retries=1)
    def poll_raw() -> None:
        raise Retry(countdown=countdown)

    with app.worker(concurrency=2):
        for task in (poll, poll_raw):
            with pytest.raises(TaskFailed) as info:
                task.delay().get(timeout=WAIT)
            assert info.value.exc_type.endswith("ValueError")
            assert info.value.message.startswith(f"{task.name}: retry countdown ")


def test_a_retry_with_a_countdown_already_past_runs_again_at_once(app: App) -> None:
    @app.task(bind=True, retries=1)
    def poll(ctx: TaskContext) -> int:
        if ctx.attempt == 1:
            ctx.retry(countdown=-5.0)  # due - now, with due already past
        return ctx.attempt

    with app.worker(concurrency=1):
        assert poll.delay().get(timeout=WAIT) == 2
