"""What stopping and cancelling do to sync bodies running in threads.

Python can interrupt a thread only when it runs Python bytecode: a body in a loop of short
calls gets the interrupt at once, a body blocked in C code (a lock, a socket, a long
``time.sleep``) only when that call returns. ``stop_now()`` returns within a few seconds
either way, and a message goes back to the broker only once its body can no longer run.
"""

from __future__ import annotations

import threading
import time

import pytest

from taskflow import App, TaskCancelled, TaskContext, TaskStatus
from taskflow.brokers import MemoryBroker

WAIT = 10.0
LEASE = 0.5


def test_stop_now_returns_while_a_body_blocks_in_c_and_keeps_its_message_until_it_returns() -> None:
    started, release = threading.Event(), threading.Event()
    runs: list[int] = []

    with App("blocked", broker=MemoryBroker(lease=LEASE)) as app:

        @app.task
        def block() -> str:
            runs.append(1)
            started.set()
            release.wait()  # blocked in C: an interrupt lands only once this returns
            return "done"

        result = block.delay()
        worker = app.worker(concurrency=1).start()
        try:
            assert started.wait(WAIT)
            began = time.monotonic()
            worker.stop_now()
            assert time.monotonic() - began < 3.0
            # The body still runs: its message is neither handed back nor let go, for
            # three leases (it is renewed meanwhile).
            probe = app.kernel.call(app.broker.fetch(["default"], 1, 3 * LEASE))
            assert probe == []
            assert result.status is TaskStatus.RUNNING
        finally:
            release.set()
        # Once the body has returned, the message goes back and runs again.
        with app.worker(concurrency=1):
            assert result.get(timeout=WAIT) == "done"
        assert runs == [1, 1]
        assert result.info().attempts == 1  # handed back, not retried


def test_a_cancelled_sync_body_in_python_code_is_interrupted_and_sees_ctx_cancelled(
    app: App,
) -> None:
    started, unwound = threading.Event(), threading.Event()
    seen: list[tuple[str, bool]] = []

    @app.task(bind=True)
    def spin(ctx: TaskContext) -> None:
        started.set()
        try:
            while True:  # Python bytecode only: interruptible between instructions
                sum(range(100))
        except BaseException as exc:
            seen.append((type(exc).__name__, ctx.cancelled.is_set()))
            unwound.set()
            raise

    result = spin.delay()
    with app.worker(concurrency=1):
        assert started.wait(WAIT)
        assert result.cancel() is True
        with pytest.raises(TaskCancelled):
            result.get(timeout=WAIT)
        assert unwound.wait(WAIT)
    # Not an Exception, so that ``except Exception`` in task code does not swallow it.
    assert seen == [("Interrupted", True)]


def test_a_cancelled_sync_body_blocked_in_c_runs_on_until_that_call_returns(app: App) -> None:
    started, release = threading.Event(), threading.Event()
    after: list[bool] = []
    contexts: list[TaskContext] = []

    @app.task(bind=True)
    def block(ctx: TaskContext) -> None:
        contexts.append(ctx)
        started.set()
        release.wait()  # cannot be interrupted while waiting here
        after.append(ctx.cancelled.is_set())

    result = block.delay()
    with app.worker(concurrency=1):
        assert started.wait(WAIT)
        assert result.cancel() is True
        with pytest.raises(TaskCancelled):
            result.get(timeout=WAIT)  # the record is final at once ...
        # The worker has taken the cancel command (the record was final before it did) ...
        assert contexts[0].cancelled.wait(WAIT)
        # ... and one turn of its loop later the thread's interrupt is pending.
        app.kernel.call(_loop_turn())
        assert after == []  # ... while the body still waits in C
        release.set()
    # It returned to Python with the interrupt pending: the statement after the wait
    # never ran.
    assert after == []


async def _loop_turn() -> None:
    """Nothing: running it on the worker's loop means the loop took one more turn."""
