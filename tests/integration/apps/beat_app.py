"""A Redis app for the beat process test: an every-second schedule whose task counts its
runs with a Redis INCR and records its task id (to prove no run executes twice)."""

from __future__ import annotations

import os

import redis

from taskflow import App, TaskContext

URL = os.environ["BEAT_TEST_URL"]
PREFIX = os.environ["BEAT_TEST_PREFIX"]

app = App("beattest", broker=f"{URL}?prefix={PREFIX}")
_client = redis.Redis.from_url(URL)


@app.periodic(every=1.0, name="tick")
@app.task(bind=True)
def tick(ctx: TaskContext) -> None:
    """Count one run."""
    _client.incr(f"{PREFIX}:test:count")
    _client.rpush(f"{PREFIX}:test:ids", ctx.id)
