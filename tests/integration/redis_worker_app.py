"""An app for the Redis integration tests, run by ``taskflow worker -A`` in a subprocess.

``TASKFLOW_BROKER_URL`` carries the server, the prefix and the lease. Each run of a task
appends ``<pid>`` to the Redis list ``<prefix>:runs:<task id>`` so tests can count runs, on
the broker's server or on the one of ``TASKFLOW_RUNS_URL`` (a test whose broker's server
refuses writes).
"""

from __future__ import annotations

import os
from urllib.parse import parse_qs, urlsplit

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from taskflow import App, current_task
from tests.integration.worker_tasks import register_tasks

URL = os.environ.get("TASKFLOW_BROKER_URL", "redis://127.0.0.1:6379/0")
PREFIX = parse_qs(urlsplit(URL).query).get("prefix", ["taskflow"])[0]

app = App("redisit", broker=URL)
# The restart test stops the server under running tasks: ride that out.
_client = redis.Redis.from_url(
    os.environ.get("TASKFLOW_RUNS_URL", URL).split("?", 1)[0],
    retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), 8),
    retry_on_error=[redis.ConnectionError],
)


def note_run() -> None:
    """Record that this process ran the current task."""
    ctx = current_task()
    assert ctx is not None
    _client.rpush(f"{PREFIX}:runs:{ctx.id}", os.getpid())


register_tasks(app, note_run)
