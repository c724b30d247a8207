"""The tasks of the Redis and NATS integration apps, which differ only in where a run is noted."""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from taskflow import App, TaskContext


def register_tasks(app: App, note_run: Callable[[], None]) -> None:
    """Declare ``it.sleep``, ``it.add``, ``it.delivery`` and ``it.once`` on ``app``; each run
    calls ``note_run`` first."""

    @app.task(name="it.sleep", retries=2, timeout=60)
    def sleep(seconds: float) -> int:
        """Sleep, then return the worker's pid."""
        note_run()
        time.sleep(seconds)
        return os.getpid()

    @app.task(name="it.add", retries=2)
    def add(x: int, y: int) -> int:
        """Add two numbers."""
        note_run()
        return x + y

    @app.task(name="it.delivery", bind=True, timeout=60)
    def delivery(ctx: TaskContext, seconds: float) -> list[int]:
        """Sleep (retries=0, the default), then return [pid, attempt, delivery]."""
        note_run()
        time.sleep(seconds)
        return [os.getpid(), ctx.attempt, ctx.delivery]

    @app.task(name="it.once", on_lost="fail", timeout=60)
    def once(seconds: float) -> int:
        """Sleep, then return the pid; must never run twice (dead-lettered if its worker dies)."""
        note_run()
        time.sleep(seconds)
        return os.getpid()
