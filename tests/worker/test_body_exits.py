"""A body that calls ``sys.exit()``, raises ``KeyboardInterrupt`` or a ``CancelledError`` of
its own fails its attempt, like any error, and the worker goes on serving: it is the
task's outcome, not the worker's. A hook or execute middleware that calls ``sys.exit()``
is logged and ignored, as any that raises."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from taskflow import App, TaskContext
from taskflow.errors import TaskFailed
from taskflow.middleware import ExecuteNext, Middleware


@pytest.mark.parametrize("kind", ["def", "async def"])
def test_sys_exit_in_a_body_fails_the_attempt_without_a_retry_and_the_worker_goes_on(
    fake_app: App, kind: str
) -> None:
    def quits(code: int) -> None:
        sys.exit(code)

    async def aquits(code: int) -> None:
        sys.exit(code)

    # Retries are for the errors of retry_on (Exception by default): not for an exit.
    task = fake_app.task(name="exits.main", retries=2)(quits if kind == "def" else aquits)

    @fake_app.task(name="exits.after")
    def after() -> str:
        return "served"

    failed, next_one = task.delay(2), after.delay()
    assert fake_app.worker(concurrency=1).run_until_idle() == 2

    with pytest.raises(TaskFailed) as caught:
        failed.get(timeout=1)
    assert (caught.value.exc_type, caught.value.message) == ("SystemExit", "2")
    assert failed.info().attempts == 1
    assert next_one.get(timeout=1) == "served"


def test_keyboard_interrupt_raised_by_a_sync_body_fails_the_attempt(fake_app: App) -> None:
    @fake_app.task(name="exits.interrupt", retries=0)
    def interrupt() -> None:
        raise KeyboardInterrupt

    result = interrupt.delay()
    worker = fake_app.worker(concurrency=1)
    assert worker.run_until_idle() == 1

    with pytest.raises(TaskFailed) as caught:
        result.get(timeout=1)
    assert caught.value.exc_type == "KeyboardInterrupt"


async def _raises_cancelled_itself() -> None:
    raise asyncio.CancelledError


async def _awaits_a_future_cancelled_elsewhere() -> None:
    future = asyncio.get_running_loop().create_future()
    future.cancel()  # as a library might, for a call this body waits on
    await future


@pytest.mark.parametrize("body", [_raises_cancelled_itself, _awaits_a_future_cancelled_elsewhere])
def test_a_cancelled_error_of_the_body_own_fails_its_attempt_once(
    fake_app: App, body: Callable[[], Awaitable[None]]
) -> None:
    # No one cancelled the attempt: handing the message back would run it again at once,
    # for ever (a hot loop of the same attempt).
    runs: list[int] = []

    async def counted() -> None:
        runs.append(1)
        await body()

    task = fake_app.task(name="exits.cancelled", retries=2)(counted)
    result = task.delay()
    assert fake_app.worker(concurrency=1).run_until_idle() == 1

    with pytest.raises(TaskFailed) as caught:
        result.get(timeout=1)
    assert caught.value.exc_type == "asyncio.exceptions.CancelledError"
    assert (runs, result.info().attempts) == ([1], 1)


class Quitting(Middleware):
    """Execute middleware that calls ``sys.exit()`` before the task runs."""

    async def execute(self, ctx: TaskContext, call_next: ExecuteNext) -> Any:
        sys.exit(5)


def test_a_hook_or_middleware_that_calls_sys_exit_is_logged_and_ignored(
    fake_app: App, caplog: pytest.LogCaptureFixture
) -> None:
    fake_app.add_middleware(Quitting())

    @fake_app.hook("success")
    def quitting_hook(event: Any) -> None:
        sys.exit(6)

    @fake_app.task(name="exits.fine")
    def fine(n: int) -> int:
        return n

    first, second = fine.delay(1), fine.delay(2)
    with caplog.at_level(logging.ERROR, logger="taskflow"):
        assert fake_app.worker(concurrency=1).run_until_idle() == 2

    assert (first.get(timeout=1), second.get(timeout=1)) == (1, 2)
    logged = [r.getMessage() for r in caplog.records]
    assert sum("middleware Quitting failed in execute; ignored" in m for m in logged) == 2
    assert sum("success hook" in m and "quitting_hook" in m for m in logged) == 2


def test_stop_iteration_out_of_a_sync_body_fails_its_attempt(fake_app: App) -> None:
    # A future refuses StopIteration: the outcome was never delivered, and the task held
    # its slot (and its lease) for ever.
    @fake_app.task(name="exits.first_of", retries=0)
    def first_of(items: list[int]) -> int:
        return next(iter(items))

    @fake_app.task(name="exits.fine_too")
    def fine_too() -> str:
        return "served"

    empty, after = first_of.delay([]), fine_too.delay()
    assert fake_app.worker(concurrency=2).run_until_idle() == 2

    with pytest.raises(TaskFailed) as caught:
        empty.get(timeout=1)
    assert (caught.value.exc_type, caught.value.message) == (
        "RuntimeError",
        "the task's body raised StopIteration",
    )
    assert "return next(iter(items))" in caught.value.traceback  # the cause, with its line
    assert after.get(timeout=1) == "served"
