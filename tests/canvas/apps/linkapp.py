"""The app that ``taskflow worker`` processes load for the callback process tests.

Configured through the environment: ``LINK_URL`` (Redis URL with the test's prefix and
lease) and ``LINK_COUNTERS`` (a Redis key prefix for what the callbacks saw). The test seam:
the first worker that has stored the outcome of a ``link.source`` or ``link.broken`` task
kills itself with SIGKILL right there, after the result and before any callback is sent
(one death per task id, claimed with SETNX, so the redelivery goes through).
"""

from __future__ import annotations

import os
import signal
from typing import Any

import redis

from taskflow import App, TaskContext, TaskStatus
from taskflow.message import Envelope

URL = os.environ["LINK_URL"]
COUNTERS = os.environ["LINK_COUNTERS"]

app = App("link-processes", broker=URL, results=URL)
_redis = redis.Redis.from_url("redis://127.0.0.1:6379/0")
_VICTIMS = ("link.source", "link.broken")


@app.task(name="link.source")
def source(x: int) -> int:
    """Succeeds; its ``link`` callback gets the result."""
    return 2 * x


@app.task(name="link.broken")
def broken(x: int) -> int:
    """Fails for good at once; its ``link_error`` callback gets its id."""
    raise ValueError(f"broken {x}")


@app.task(name="link.callback", bind=True)
def callback(ctx: TaskContext, value: Any, tag: str) -> None:
    """Counts its runs per tag, keeps the value it got and notes its own task id: one id
    per callback sent (a worker killed while it runs one runs that same id again)."""
    _redis.incr(f"{COUNTERS}:runs:{tag}")
    _redis.sadd(f"{COUNTERS}:sent:{tag}", ctx.id)
    _redis.rpush(f"{COUNTERS}:values:{tag}", str(value))


_continue = app.kernel.run_continuations


async def _die_once_after_the_outcome(envelope: Envelope, status: TaskStatus, encoded: Any) -> None:
    if envelope.task in _VICTIMS and _redis.set(f"{COUNTERS}:died:{envelope.id}", 1, nx=True):
        os.kill(os.getpid(), signal.SIGKILL)
    await _continue(envelope, status, encoded)


app.kernel.run_continuations = _die_once_after_the_outcome  # type: ignore[method-assign]
