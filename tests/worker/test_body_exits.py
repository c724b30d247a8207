"""A body that calls ``sys.exit()`` or raises ``KeyboardInterrupt`` fails its attempt, like
any error, and the worker goes on serving: it is the task's outcome, not the worker's."""

from __future__ import annotations

import sys

import pytest

from taskflow import App
from taskflow.errors import TaskFailed


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
