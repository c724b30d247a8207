"""The app that ``taskflow worker`` processes load for the canvas process tests.

Configured by the test through the environment: ``CANVAS_URL`` (Redis URL with this test's
prefix and lease), ``CANVAS_COUNTERS`` (a Redis key prefix for the run counters) and
``CANVAS_MEMBER_DELAY`` (seconds each member takes, to leave time to kill a worker).
"""

from __future__ import annotations

import os
import time

import redis

from taskflow import App

URL = os.environ["CANVAS_URL"]
COUNTERS = os.environ["CANVAS_COUNTERS"]
DELAY = float(os.environ.get("CANVAS_MEMBER_DELAY", "0"))

app = App("canvas-processes", broker=URL, results=URL)
_counter = redis.Redis.from_url("redis://127.0.0.1:6379/0")


@app.task(name="canvas.double", retries=3, retry_backoff=0.1)
def double(x: int) -> int:
    """A header member: counts its runs, takes ``DELAY`` seconds."""
    _counter.incr(f"{COUNTERS}:members")
    if DELAY:
        time.sleep(DELAY)
    return 2 * x


@app.task(name="canvas.tally", retries=3, retry_backoff=0.1)
def tally(values: list[int]) -> int:
    """The chord body: counts its runs in Redis (shared by every worker process)."""
    _counter.incr(f"{COUNTERS}:body")
    return sum(values)
