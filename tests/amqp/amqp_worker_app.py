"""An app for the RabbitMQ process tests, run by ``taskflow worker -A`` in a subprocess.

``TASKFLOW_BROKER_URL`` carries the RabbitMQ prefix and lease, ``TASKFLOW_RESULTS_URL``
the Redis result store. Each run of a task appends ``<pid>`` to the Redis list
``<prefix>:runs:<task id>`` so tests can count runs.
"""

from __future__ import annotations

import os
from urllib.parse import parse_qs, urlsplit

import redis

from taskflow import App, current_task
from tests.integration.worker_tasks import register_tasks

URL = os.environ.get("TASKFLOW_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672")
PREFIX = parse_qs(urlsplit(URL).query).get("prefix", ["taskflow"])[0]

app = App("amqpit", broker=URL)
_client = redis.Redis.from_url("redis://127.0.0.1:6379/0")


def note_run() -> None:
    """Record that this process ran the current task."""
    ctx = current_task()
    assert ctx is not None
    _client.rpush(f"{PREFIX}:runs:{ctx.id}", os.getpid())


register_tasks(app, note_run)
