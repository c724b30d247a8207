"""A body's exception whose ``__str__`` fails is still the task's recorded failure (with a
placeholder for its message), not an error of the worker that leaves the message leased."""

from __future__ import annotations

import pytest

from taskflow import App
from taskflow.errors import TaskFailed


class Unprintable(Exception):
    """An exception whose message cannot be made (a bug in a library's exception class)."""

    def __str__(self) -> str:
        raise RuntimeError("no message")


def test_an_exception_whose_str_fails_is_recorded_as_the_tasks_failure(fake_app: App) -> None:
    @fake_app.task(name="errors.unprintable", retries=0)
    def unprintable() -> None:
        raise Unprintable

    result = unprintable.delay()
    assert fake_app.worker(concurrency=1).run_until_idle() == 1

    with pytest.raises(TaskFailed) as caught:
        result.get(timeout=1)
    assert caught.value.exc_type.endswith("test_unprintable_errors.Unprintable")
    assert caught.value.message == "<exception str() failed: Unprintable>"
    assert "raise Unprintable" in caught.value.traceback
    assert result.info().attempts == 1
