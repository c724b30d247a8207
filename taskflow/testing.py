"""Helpers for testing code that uses taskflow.

A pytest example::

    from taskflow import App, FakeClock
    from taskflow.testing import drain

    def test_signup_sends_the_welcome_email():
        clock = FakeClock()
        app = App("test", clock=clock)
        ...                                   # declare tasks, call the code under test
        assert drain(app) == 1                # ran every task that was due
        clock.advance(60)                     # retries and countdowns need time to pass
        assert drain(app) == 0
        app.close()

Everything here runs in the calling thread on the in-memory backend (or whatever the app
uses); nothing sleeps.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from .app import App
from .clock import FakeClock
from .worker import Worker

__all__ = ["drain", "running_worker", "test_app"]


def drain(
    app: App, queues: Sequence[str] | None = None, concurrency: int = 1, **options: Any
) -> int:
    """Run every task that is due now on ``queues`` and return how many ran.

    A thin wrapper over :meth:`Worker.run_until_idle`; with a :class:`FakeClock`, advance
    it and call again to run retries and countdowns.
    """
    return app.worker(queues=queues, concurrency=concurrency, **options).run_until_idle()


@contextmanager
def running_worker(
    app: App, queues: Sequence[str] | None = None, concurrency: int = 4, **options: Any
) -> Iterator[Worker]:
    """A started worker for the block; stopped (gracefully) afterwards."""
    worker = app.worker(queues=queues, concurrency=concurrency, **options).start()
    try:
        yield worker
    finally:
        worker.stop()


@contextmanager
def test_app(
    name: str = "test", *, clock: FakeClock | None = None, **options: Any
) -> Iterator[App]:
    """An in-memory :class:`App` (on ``clock`` if given), closed after the block."""
    app = App(name, clock=clock, **options)
    try:
        yield app
    finally:
        app.close()


test_app.__test__ = False  # type: ignore[attr-defined]  # not a test for pytest to collect
