"""An app for the Redis integration tests, run by ``taskflow worker -A`` in a subprocess.

``TASKFLOW_BROKER_URL`` carries the server, the prefix and the lease. Each run of a task
appends ``<pid>`` to the Redis list ``<prefix>:runs:<task id>`` so tests can count runs.
"""

from __future__ import annotations

import os
import time
from urllib.parse import parse_qs, urlsplit

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from taskflow import App, TaskContext, current_task

URL = os.environ.get("TASKFLOW_BROKER_URL", "redis://127.0.0.1:6379/0")
PREFIX = parse_qs(urlsplit(URL).query).get("prefix", ["taskflow"])[0]

app = App("redisit", broker=URL)
# The restart test stops the server under running tasks: ride that out.
_client = redis.Redis.from_url(
    URL.split("?", 1)[0],
    retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), 8),
    retry_on_error=[redis.ConnectionError],
)


def note_run() -> None:
    """Record that this process ran the current task."""
    ctx = current_task()
    assert ctx is not None
    _client.rpush(f"{PREFIX}:runs:{ctx.id}", os.getpid())


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
