"""The app that benchmarks of real workers on Redis start ``taskflow worker`` with.

One task, ``bench.incr``, whose body does what the shared peer harness's no-op body does:
one ``INCR`` on Redis, a blocking call from a plain ``def`` or awaited through redis-py's
asyncio client from an ``async def``. A worker loads it as ``bench._incr_app:app`` (or
through a benchmark module that imports it); the environment says how:

``BENCH_URL``    the broker, with its ``prefix`` (the counter is ``<prefix>:done`` on the
                 same server)
``BENCH_ASYNC``  ``1``: ``async def`` bodies
``BENCH_STORE``  ``1``: the tasks store their results (else fire-and-forget)
``BENCH_FAIL``   ``1``: every body raises after its ``INCR`` (no retries)
``BENCH_LOG``    ``1``: every sync body logs one WARNING line after its ``INCR``

It imports nothing a worker would not import for a small Redis app of its own, so that a
benchmark of the worker's start-up measures the worker's.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

import redis
import redis.asyncio as aioredis

from taskflow import App

__all__ = ["NAME", "app", "build_app", "counter_key", "fill"]

NAME = "bench.incr"
URL = os.environ.get("BENCH_URL", "redis://127.0.0.1:6379/15?prefix=taskflow-bench")


def counter_key(url: str) -> str:
    """The key the bodies of an app on ``url`` count their calls in."""
    prefix = parse_qs(urlsplit(url).query).get("prefix", ["taskflow-bench"])[0]
    return f"{prefix}:done"


_server = URL.split("?", 1)[0]
_counter_key = counter_key(URL)
_counter = redis.Redis.from_url(_server)
_acounter: aioredis.Redis | None = None


def _incr() -> None:
    """One blocking round trip to Redis, like the peer harness's no-op body."""
    _counter.incr(_counter_key)


def _incr_and_log() -> None:
    """:func:`_incr`, then one log line."""
    _incr()
    logging.getLogger("bench.body").warning("counted in %s", _counter_key)


def _incr_and_fail() -> None:
    """:func:`_incr`, then a failure."""
    _incr()
    raise RuntimeError("failing on purpose")


async def _aincr() -> None:
    """:func:`_incr` awaited, with one asyncio client per worker process."""
    global _acounter  # made in the worker process, on its loop
    if _acounter is None:
        _acounter = aioredis.Redis.from_url(_server)
    await _acounter.incr(_counter_key)


async def _aincr_and_fail() -> None:
    """:func:`_aincr`, then a failure."""
    await _aincr()
    raise RuntimeError("failing on purpose")


def build_app(
    url: str, store: bool = False, fail: bool = False, aio: bool = False, log: bool = False
) -> App:
    """The benchmark app: one task, sync unless ``aio``, fire-and-forget unless ``store``,
    failing (no retries) if ``fail``, logging a line (sync bodies) if ``log``."""
    bench = App("bench", broker=url)
    sync_body = _incr_and_fail if fail else _incr_and_log if log else _incr
    async_body = _aincr_and_fail if fail else _aincr
    body: Callable[[], Any] = async_body if aio else sync_body
    bench.task(name=NAME, store_result=store, retries=0)(body)
    return bench


def fill(bench: App, tasks: int) -> None:
    """Send ``tasks`` calls of the benchmark's task, 1,000 per ``enqueue_many``."""
    task: Any = bench.registry.get(NAME)
    assert task is not None
    for sent in range(0, tasks, 1000):
        bench.enqueue_many([task.s() for _ in range(min(1000, tasks - sent))])


app = build_app(
    URL,
    os.environ.get("BENCH_STORE") == "1",
    os.environ.get("BENCH_FAIL") == "1",
    os.environ.get("BENCH_ASYNC") == "1",
    os.environ.get("BENCH_LOG") == "1",
)
