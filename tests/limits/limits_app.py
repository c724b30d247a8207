"""An app for the cluster-limit process tests, run by ``taskflow worker -A`` in
subprocesses.

``TASKFLOW_BROKER_URL`` names the broker (Redis or SQLite) and its lease. The tasks record
what they see in the shared Redis under ``LIMITS_KEY``, whatever the broker: start times,
how many run at once (the most at once too), which process ran what.
"""

from __future__ import annotations

import os
import time

import redis

from taskflow import App, TaskContext

URL = os.environ.get("TASKFLOW_BROKER_URL", "redis://127.0.0.1:6379/0")
KEY = os.environ.get("LIMITS_KEY", "tflimits")
RECORD_URL = "redis://127.0.0.1:6379/0"

app = App("limits", broker=URL)
_client = redis.Redis.from_url(RECORD_URL)

# Count one more running task and keep the most seen at once, atomically.
_ENTER = _client.register_script(
    """
    local now = redis.call('INCR', KEYS[1])
    if now > tonumber(redis.call('GET', KEYS[2]) or '0') then redis.call('SET', KEYS[2], now) end
    return now
    """
)


@app.task(name="limits.rated", cluster_rate_limit="5/s")
def rated(n: int) -> None:
    """Record when it started, and where."""
    _client.rpush(f"{KEY}:starts", f"{time.time()!r} {os.getpid()}")


@app.task(name="limits.guarded", cluster_concurrency=2)
def guarded(n: int, hold: float) -> None:
    """Count itself running for ``hold`` seconds."""
    _ENTER(keys=[f"{KEY}:running", f"{KEY}:most"])
    try:
        time.sleep(hold)
    finally:
        _client.decr(f"{KEY}:running")
    _client.rpush(f"{KEY}:done", n)


@app.task(name="limits.single", cluster_concurrency=1, bind=True)
def single(ctx: TaskContext, n: int, hold: float) -> None:
    """Record its start; hold the permit for ``hold`` seconds on its first delivery."""
    _client.rpush(f"{KEY}:single", f"{n} {ctx.delivery} {os.getpid()} {time.time()!r}")
    if ctx.delivery == 1:
        time.sleep(hold)
