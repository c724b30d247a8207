"""A ``get()`` interrupted by Ctrl-C (KeyboardInterrupt in the waiting thread) leaves no
wait behind in a process that carries on: on Redis and NATS the wait coroutine on the
app's loop is cancelled before the interrupt propagates; in memory the waiter is dropped."""

from __future__ import annotations

import asyncio
import signal
import threading
import uuid
from collections.abc import Iterator
from types import FrameType

import pytest

from taskflow import App
from taskflow.errors import ResultTimeout
from tests.integration import nats_helpers, redis_helpers


@pytest.fixture(params=["memory", "redis", "nats"])
def app(request: pytest.FixtureRequest) -> Iterator[App]:
    helpers = {"redis": redis_helpers, "nats": nats_helpers}.get(request.param)
    if helpers is None:
        with App("interrupted") as application:
            yield application
        return
    url, prefix = helpers.shared_url(lease=30)
    try:
        with App("interrupted", broker=url) as application:
            yield application
    finally:
        helpers.drop_prefix(url, prefix)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


# The Redis store's shared pub/sub reader comes and goes with its subscriptions (it ends
# about a second after the last waiter left); it is not a wait of its own.
_SHARED = {"DoneListener._listen"}


def _name(task: asyncio.Task[object]) -> str:
    return str(getattr(task.get_coro(), "__qualname__", ""))


async def _live_tasks() -> set[asyncio.Task[object]]:
    me = asyncio.current_task()
    return {
        t for t in asyncio.all_tasks() if t is not me and not t.done() and _name(t) not in _SHARED
    }


def test_an_interrupted_get_leaves_no_wait_running(app: App) -> None:
    assert threading.current_thread() is threading.main_thread()
    queue = f"q{uuid.uuid4().hex[:8]}"

    @app.task(name="never.runs", queue=queue)
    def never() -> None:
        return None

    result = never.delay()  # no worker: it stays queued
    # A first bounded wait opens what a store keeps for all waits (Redis: its listener).
    with pytest.raises(ResultTimeout):
        result.get(timeout=0.05)
    before = app.kernel.call(_live_tasks())

    previous = signal.signal(signal.SIGALRM, _interrupt)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.3)
        with pytest.raises(KeyboardInterrupt):
            result.get(timeout=30)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)

    left = app.kernel.call(_live_tasks()) - before
    assert not left, f"waits left on the app's loop: {left}"
    store = app.results
    if store.url == "memory://":
        assert store._waiters == {}  # type: ignore[attr-defined]
    # The process carries on: the handle still works.
    with pytest.raises(ResultTimeout):
        result.get(timeout=0.05)
