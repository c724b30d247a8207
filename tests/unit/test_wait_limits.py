"""A wait's ``timeout`` in every spelling users write: no limit (None, infinity, a span
longer than a thread can wait) waits for the outcome; NaN or a value that is not a number
is refused at the call, naming the argument."""

from __future__ import annotations

import asyncio
import math
import queue
import threading
from typing import Any

import pytest

from taskflow import App, TaskCancelled, TaskContext, group
from taskflow.results import MemoryResultStore

WAIT = 10.0


class EnteredStore(MemoryResultStore):
    """The in-memory store, saying when a caller's thread starts waiting on it."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()

    def wait_blocking(self, task_id: str, timeout: float | None) -> dict[str, Any] | None:
        self.entered.set()
        return super().wait_blocking(task_id, timeout)


@pytest.mark.parametrize("limit", [math.inf, 1e10, 10**12])
def test_a_wait_longer_than_a_thread_can_wait_waits_for_the_outcome(limit: float) -> None:
    # threading's waits stop at TIMEOUT_MAX (about 292 years): get(timeout=float("inf"))
    # raised OverflowError on the in-memory store instead of waiting.
    store = EnteredStore()
    with App("waits", results=store) as app:

        @app.task
        def add(x: int, y: int) -> int:
            return x + y

        sent = add.delay(2, 3)
        got: list[object] = []
        waiter = threading.Thread(target=lambda: got.append(_outcome(sent.get, limit)))
        waiter.start()
        assert store.entered.wait(WAIT)
        app.worker(concurrency=1).run_until_idle()
        waiter.join(WAIT)
        assert got == [5]
        members = group(add.s(1, 1), add.s(2, 2)).apply_async()
        app.worker(concurrency=1).run_until_idle()
        assert members.get(timeout=limit) == [2, 4]


def _outcome(get: Any, limit: float) -> object:
    try:
        return get(timeout=limit)
    except Exception as exc:
        return exc


@pytest.mark.parametrize("bad", [math.nan, "10", True, b"1"])
def test_a_timeout_that_is_not_a_number_of_seconds_is_refused(app: App, bad: object) -> None:
    @app.task
    def job() -> None: ...

    sent = job.delay()
    members = group(job.s()).apply_async()
    why = r"timeout must be None or a number of seconds, got"
    with pytest.raises(ValueError, match=why):
        sent.get(timeout=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=why):
        asyncio.run(sent.aget(timeout=bad))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=why):
        members.get(timeout=bad)  # type: ignore[arg-type]
    worker = app.worker(concurrency=1).start()
    events = worker.subscribe()
    with pytest.raises(ValueError, match=why):
        events.get(timeout=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=why):
        worker.stop(timeout=bad)  # type: ignore[arg-type]
    assert worker.state == "running"  # the refused stop changed nothing
    worker.stop()


def test_a_body_waiting_for_its_cancel_without_a_limit_sees_it(app: App) -> None:
    # ctx.cancelled.wait(float("inf")) raised OverflowError in the body.
    waiting = threading.Event()
    saw: queue.Queue[bool] = queue.Queue()

    @app.task(bind=True)
    def patient(ctx: TaskContext) -> None:
        waiting.set()
        try:
            ctx.cancelled.wait(math.inf)
        finally:  # a cancel also interrupts the body's thread
            saw.put(ctx.cancelled.is_set())

    sent = patient.delay()
    with app.worker(concurrency=1) as worker:
        assert waiting.wait(WAIT)
        assert worker.cancel(sent.id) is True
        with pytest.raises(TaskCancelled):
            sent.get(timeout=WAIT)
        assert saw.get(timeout=WAIT) is True


def test_a_beat_stopped_without_a_limit_stops(app: App) -> None:
    # Its stop waited with threading's wait, which raised OverflowError for infinity.
    beat = app.beat().start()
    beat.stop(timeout=math.inf)
    assert beat.state == "stopped"


def test_the_limits_a_wait_is_given() -> None:
    from taskflow._waiters import wait_limit

    assert wait_limit(None) is None
    assert wait_limit(math.inf) is None
    assert wait_limit(threading.TIMEOUT_MAX) is None
    assert wait_limit(-3) == 0.0
    assert wait_limit(2) == 2.0
