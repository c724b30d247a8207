"""Where the time of one pickup goes on Redis: from ``delay()`` to the body's own write.

Run from the project root (as a module)::

    python -m bench.pickup_trace [--samples 300] [--sync] [--idle]
                                 [--url redis://127.0.0.1:6379/15]

A worker (8 slots) runs in this process; a producer process sends one task at a time that
stores its result (like the peer harness's latency task), and waits for the body's
``LPUSH``, as the harness does. The worker's steps are timed by wrapping them here (the
worker's code is not changed), on the system-wide monotonic clock both processes share.
Printed, in milliseconds from the start of the ``delay()`` call, p50 / p90 / p99 of:

* ``delay() returned``: the queued record written and the message published;
* ``fetched``: the wake-up and the fetch behind it answered (the fetch reply parsed);
* ``started: sent``, ``answered``, ``returned``: the ``running`` record's write;
* ``body``: the task's code starts; ``done``: the producer has the body's ``LPUSH``.

``--sync`` times a plain ``def`` body (on the worker's threads), else ``async def``;
``--idle`` waits 0.5-1.5 s before each send (as the harness's idle pickup; 20 samples by
default then). Keys live under the prefix ``taskflow-trace`` and are deleted at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import redis
import redis.asyncio as aioredis

from bench._keys import drop_keys
from taskflow import App

_STEPS = (
    ("delay() returned", "published"),
    ("fetched", "fetched"),
    ("started: sent", "sent"),
    ("started: answered", "answered"),
    ("started: returned", "started"),
    ("body", "body"),
    ("done", "done"),
)
_marks: dict[str, float] = {}
_now = time.monotonic


def _instrument() -> None:
    """Wrap the worker steps that are timed (this process only)."""
    from taskflow._redis.connection import Connection
    from taskflow.brokers._redis_wait import IdleWait
    from taskflow.worker.settle import Settler

    def after(owner: Any, name: str, mark: str, took: Callable[[Any], bool]) -> None:
        inner: Callable[..., Any] = getattr(owner, name)

        async def timed(*args: Any, **kwargs: Any) -> Any:
            value = await inner(*args, **kwargs)
            if took(value):
                _marks.setdefault(mark, _now())
            return value

        setattr(owner, name, timed)

    # A wait that ended without a message (its timeout) is not the pickup's.
    after(IdleWait, "_blpop_then_fetch", "fetched", lambda got: bool(got and got[0]))
    run = Connection.run

    async def run_timed(self: Connection, script: str, args: Any) -> Any:
        timed = script == "result_update" and "fetched" in _marks and "started" not in _marks
        if timed:
            _marks.setdefault("sent", _now())
        value = await run(self, script, args)
        if timed:
            _marks.setdefault("answered", _now())
        return value

    Connection.run = run_timed  # type: ignore[method-assign]
    after(Settler, "started", "started", lambda ok: True)


def build_app(url: str, sync: bool) -> App:
    """The app: one task that reports the worker's marks to the producer."""
    app = App("trace", broker=url)
    base = url.split("?", 1)[0]
    if sync:
        client = redis.Redis.from_url(base)

        def report(key: str, sent: float) -> None:
            marks = {name: (at - sent) * 1000 for name, at in _marks.items()}
            marks["body"] = (_now() - sent) * 1000
            _marks.clear()
            client.lpush(key, json.dumps(marks))

        app.task(name="trace.report")(report)
    else:
        aclient = aioredis.Redis.from_url(base)

        async def areport(key: str, sent: float) -> None:
            marks = {name: (at - sent) * 1000 for name, at in _marks.items()}
            marks["body"] = (_now() - sent) * 1000
            _marks.clear()
            await aclient.lpush(key, json.dumps(marks))

        app.task(name="trace.report")(areport)
    return app


def produce(url: str, sync: bool, samples: int, idle: bool, warm: int) -> None:
    """The producer: send, wait for the body's report, print the percentiles."""
    app = build_app(url, sync)
    client = redis.Redis.from_url(url.split("?", 1)[0])
    task = app.registry.get("trace.report")
    assert task is not None
    rows: list[dict[str, float]] = []
    try:
        for i in range(samples + warm):
            if idle:
                time.sleep(random.uniform(0.5, 1.5))
            else:
                time.sleep(0.002)
            key = f"taskflow-trace:report:{i}"
            sent = _now()
            task.delay(key, sent)  # type: ignore[attr-defined]
            published = _now()
            reply = client.blpop([key], timeout=10)
            done = _now()
            if reply is None:
                raise SystemExit("no report within 10 s: is the worker running?")
            if i >= warm:
                marks = json.loads(reply[1])
                marks["published"] = (published - sent) * 1000
                marks["done"] = (done - sent) * 1000
                rows.append(marks)
    finally:
        client.close()
        app.close()
    kind = "sync" if sync else "async"
    print(f"pickup trace: {len(rows)} {'idle ' if idle else ''}samples, {kind} body, ms")
    print(f"{'step':<20}{'p50':>8}{'p90':>8}{'p99':>8}")
    for label, mark in _STEPS:
        values = sorted(row[mark] for row in rows if mark in row)
        if values:
            p90 = values[int(len(values) * 0.9)]
            p99 = values[min(len(values) - 1, int(len(values) * 0.99))]
            print(f"{label:<20}{statistics.median(values):8.3f}{p90:8.3f}{p99:8.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--samples", type=int, default=None)
    parser.add_argument("--sync", action="store_true")
    parser.add_argument("--idle", action="store_true")
    parser.add_argument("--url", default="redis://127.0.0.1:6379/15")
    parser.add_argument("--produce", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    url = f"{args.url}?prefix=taskflow-trace"
    samples = args.samples or (20 if args.idle else 300)
    if args.produce:
        produce(url, args.sync, samples, args.idle, warm=5 if args.idle else 20)
        return
    _instrument()
    app = build_app(url, args.sync)
    client = redis.Redis.from_url(args.url)
    command = [sys.executable, "-m", "bench.pickup_trace", *sys.argv[1:], "--produce"]
    try:
        with app.worker(concurrency=8):
            if subprocess.run(command, env=os.environ.copy(), check=False).returncode:
                raise SystemExit("the producer failed")
    finally:
        drop_keys(client, "*taskflow-trace*")
        client.close()
        app.close()


if __name__ == "__main__":
    main()
