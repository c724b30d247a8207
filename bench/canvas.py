"""Canvas benchmark on Redis: a chord end to end, and the group enqueue rate.

Run from the project root, as a module::

    python -m bench.canvas [--url redis://127.0.0.1:6379/15] [--members 1000] [--runs 3]
                           [--workers 3] [--concurrency 16] [--groups 20]

* chord: ``chord([double.s(i) for i in range(members)], tally.s())`` applied from a producer
  App and run by ``--workers`` embedded workers, each on its own App (its own event loop and
  connections, as separate processes would have); seconds from ``apply_async()`` until
  ``get()`` returns the body's value. Median of ``--runs``.
* group enqueue: ``group(...).apply_async()`` of ``--members`` signatures, ``--groups`` times;
  signatures per second (records + one publish per group).

Keys live under a fresh prefix that is deleted at the end.
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid
from collections.abc import Callable
from typing import Any

import redis

from bench._keys import drop_keys
from taskflow import App, chord, group


def make_app(url: str, name: str) -> tuple[App, Callable[..., Any], Callable[..., Any]]:
    """An App with the two benchmark tasks."""
    app = App(name, broker=url, results=url)

    @app.task(name="bench.double")
    def double(x: int) -> int:
        return 2 * x

    @app.task(name="bench.tally")
    def tally(values: list[int]) -> int:
        return sum(values)

    return app, double, tally


def chord_seconds(url: str, members: int, workers: int, concurrency: int, runs: int) -> list[float]:
    """End-to-end seconds of ``runs`` chords."""
    apps = [make_app(url, f"bench-worker-{i}")[0] for i in range(workers)]
    producer, double, tally = make_app(url, "bench-producer")
    running = [a.worker(concurrency=concurrency).start() for a in apps]
    times = []
    try:
        expected = sum(2 * i for i in range(members))
        for _ in range(runs):
            t0 = time.perf_counter()
            result = chord([double.s(i) for i in range(members)], tally.s()).apply_async()
            assert result.get(timeout=300) == expected
            times.append(time.perf_counter() - t0)
    finally:
        for w in running:
            w.stop()
        for a in [*apps, producer]:
            a.close()
    return times


def group_enqueue_rate(url: str, members: int, groups: int) -> float:
    """Signatures per second sent through ``group(...).apply_async()``."""
    app, double, _ = make_app(url, "bench-groups")
    try:
        group([double.s(0)]).apply_async()  # connect first
        t0 = time.perf_counter()
        for _ in range(groups):
            group(double.s(i) for i in range(members)).apply_async()
        return members * groups / (time.perf_counter() - t0)
    finally:
        app.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="redis://127.0.0.1:6379/15")
    parser.add_argument("--members", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--groups", type=int, default=20)
    args = parser.parse_args()
    prefix = f"tfbench{uuid.uuid4().hex[:8]}"
    url = f"{args.url}{'&' if '?' in args.url else '?'}prefix={prefix}"
    try:
        times = chord_seconds(url, args.members, args.workers, args.concurrency, args.runs)
        print(
            f"chord of {args.members} on Redis, {args.workers} workers x "
            f"{args.concurrency}: median {statistics.median(times):.2f}s "
            f"(runs: {', '.join(f'{t:.2f}' for t in times)})"
        )
        rate = group_enqueue_rate(url, args.members, args.groups)
        print(
            f"group enqueue ({args.members} per group, {args.groups} groups): "
            f"{rate:,.0f} signatures/s"
        )
    finally:
        client = redis.Redis.from_url(args.url.split("?")[0])
        drop_keys(client, f"{{{prefix}}}:*")
        client.close()


if __name__ == "__main__":
    main()
