"""A coroutine function under a ``functools.wraps`` decorator runs as ``async def``; a
``def`` body that returns a coroutine fails with an error that says so (it never ran)."""

from __future__ import annotations

import functools
import gc
import warnings
from collections.abc import Callable
from typing import Any

import pytest

from taskflow import App
from taskflow.errors import TaskFailed


def logged(fn: Callable[..., Any]) -> Callable[..., Any]:
    """A plain ``def`` wrapper, as logging and timing decorators are written."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)

    return wrapper


def test_a_decorated_coroutine_function_is_awaited(fake_app: App) -> None:
    ran: list[int] = []

    @fake_app.task(name="decorated.double")
    @logged
    async def double(x: int) -> int:
        ran.append(x)
        return 2 * x

    result = double.delay(21)
    assert fake_app.worker(concurrency=1).run_until_idle() == 1

    assert result.get(timeout=1) == 42
    assert ran == [21]


async def _later(x: int) -> int:
    return x


def test_a_def_body_that_returns_a_coroutine_fails_saying_it_never_ran(fake_app: App) -> None:
    @fake_app.task(name="decorated.forgot", retries=0)
    def forgot(x: int) -> Any:
        return _later(x)  # not awaited: no decorator said this is a coroutine

    result = forgot.delay(1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no "never awaited" left behind
        assert fake_app.worker(concurrency=1).run_until_idle() == 1
        gc.collect()

    with pytest.raises(TaskFailed) as caught:
        result.get(timeout=1)
    assert caught.value.exc_type == "TypeError"
    assert caught.value.message.startswith(
        "decorated.forgot: its function returned coroutine without running it: declare it async def"
    )
