"""A ``def`` body that returns a coroutine (a decorator's plain wrapper around an ``async
def``) has it run on the loop; a sync wrapper that runs a coroutine itself stays sync."""

from __future__ import annotations

import asyncio
import functools
import gc
import warnings
from collections.abc import Callable
from typing import Any

from taskflow import App


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


def test_a_def_body_that_returns_a_coroutine_has_it_run(fake_app: App) -> None:
    @fake_app.task(name="decorated.returns_coroutine", retries=0)
    def returns_coroutine(x: int) -> Any:
        return _later(x)

    result = returns_coroutine.delay(7)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no "never awaited"
        assert fake_app.worker(concurrency=1).run_until_idle() == 1
        gc.collect()

    assert result.get(timeout=1) == 7


class RunsItself:
    """A sync callable made from a coroutine function that runs it to its end itself (as
    ``asgiref``'s ``async_to_sync`` does), with ``__wrapped__`` pointing at it."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        functools.update_wrapper(self, fn)
        self.fn = fn

    def __call__(self, *args: Any) -> Any:
        return asyncio.run(self.fn(*args))


def test_a_sync_wrapper_of_a_coroutine_function_runs_on_a_thread(fake_app: App) -> None:
    async def triple(x: int) -> int:
        return 3 * x

    task = fake_app.task(name="decorated.triple")(RunsItself(triple))
    result = task.delay(5)
    assert fake_app.worker(concurrency=1).run_until_idle() == 1

    assert result.get(timeout=1) == 15  # called on a thread, where it may start a loop
