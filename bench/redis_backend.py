"""Benchmark of the Redis backend: enqueue rate, drain rate and pickup latency.

Run from the project root (as a module, so ``import redis`` finds the library)::

    python -m bench.redis_backend [--tasks 20000] [--url redis://127.0.0.1:6379/15]
                          [--prefix taskflow-bench] [--samples 200] [--slots 8]

``--tasks``    no-op tasks per enqueue/drain measurement (default 20,000)
``--url``      Redis server and database; the default uses DB 15 so it never touches the
               app data in DB 0. Keys live under ``--prefix`` and are deleted at the end.
``--prefix``   key prefix of the benchmark app
``--samples``  pickup-latency samples (one task at a time on an idle, warm worker)
``--slots``    worker concurrency per process

Measured, each with and without stored results:

* enqueue rate with a ``delay()`` loop and with ``enqueue_many`` (batches of 1,000);
* drain rate with 1 worker process x ``--slots`` and with 2 processes: the queue is paused,
  filled, then resumed, and the clock runs until every message was acked;
* pickup latency p50/p99: the time from ``delay()`` to the task body starting.

Workers are real ``taskflow worker`` processes started by this script.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import redis

from bench._drain import wait_drained
from bench._keys import drop_keys
from taskflow import App

URL = os.environ.get("BENCH_URL", "redis://127.0.0.1:6379/15?prefix=taskflow-bench")
ROOT = Path(__file__).resolve().parents[1]
_stamps = redis.Redis.from_url(URL.split("?", 1)[0])


async def _noop() -> None:
    """Does nothing."""


def _stamp(key: str) -> None:
    """Push the time the body started, for the latency measurement."""
    _stamps.rpush(key, repr(time.time()))


def build_app(url: str) -> App:
    """The benchmark app: no-op and stamp tasks, each stored and fire-and-forget."""
    bench = App("bench", broker=url)
    bench.task(name="bench.noop")(_noop)
    bench.task(name="bench.noop_fire", store_result=False)(_noop)
    bench.task(name="bench.stamp")(_stamp)
    bench.task(name="bench.stamp_fire", store_result=False)(_stamp)
    return bench


app = build_app(URL)


def _worker(url: str, slots: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "BENCH_URL": url, "PYTHONPATH": str(ROOT)}
    command = [
        sys.executable, "-m", "taskflow.cli.main", "worker", "-A", "bench.redis_backend:app",
        "-c", str(slots), "--loglevel", "warning",
    ]  # fmt: skip
    return subprocess.Popen(command, cwd=ROOT, env=env)


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
    for proc in procs:
        proc.wait(30)


def _depth(bench: App) -> dict[str, int]:
    return bench.kernel.call(bench.broker.depth("default"))  # type: ignore[attr-defined]


def _wait_consumers(client: redis.Redis, bench: App, count: int) -> None:
    channel = bench.broker.key("control")  # type: ignore[attr-defined]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if client.pubsub_numsub(channel)[0][1] >= count:
            return
        time.sleep(0.05)
    raise SystemExit("workers did not start")


def enqueue_rates(bench: App, tasks: int) -> list[tuple[str, float]]:
    """Tasks per second with a delay() loop and with enqueue_many, stored or not."""
    rows = []
    for label, name in (("stored", "bench.noop"), ("no result", "bench.noop_fire")):
        task = bench.registry.get(name)
        assert task is not None
        started = time.perf_counter()
        for _ in range(tasks):
            task.delay()
        rows.append((f"enqueue delay() loop ({label})", tasks / (time.perf_counter() - started)))
        bench.kernel.call(bench.broker.purge("default"))  # type: ignore[attr-defined]
        started = time.perf_counter()
        for _ in range(0, tasks, 1000):
            bench.enqueue_many([task.s() for _ in range(1000)])
        rows.append((f"enqueue_many ({label})", tasks / (time.perf_counter() - started)))
        bench.kernel.call(bench.broker.purge("default"))  # type: ignore[attr-defined]
    return rows


def drain_rate(
    bench: App, url: str, client: redis.Redis, tasks: int, processes: int, slots: int, task: Any
) -> float:
    """Tasks per second drained by ``processes`` worker processes."""
    procs = [_worker(url, slots) for _ in range(processes)]
    try:
        _wait_consumers(client, bench, processes)
        bench.kernel.call(bench.broker.pause("default"))  # type: ignore[attr-defined]
        for _ in range(0, tasks, 1000):
            bench.enqueue_many([task.s() for _ in range(1000)])
        started = time.perf_counter()
        bench.kernel.call(bench.broker.resume("default"))  # type: ignore[attr-defined]
        return tasks / wait_drained(lambda: _depth(bench), started, tasks)
    finally:
        _stop(procs)


def pickup_latency(
    bench: App, url: str, client: redis.Redis, samples: int, slots: int, stored: bool
) -> tuple[float, float]:
    """p50 and p99 seconds from delay() to the body starting on an idle worker."""
    procs = [_worker(url, slots)]
    key = f"{bench.broker.prefix}:stamps"  # type: ignore[attr-defined]
    latencies = []
    try:
        _wait_consumers(client, bench, 1)
        task = bench.registry.get("bench.stamp" if stored else "bench.stamp_fire")
        assert task is not None
        for i in range(samples + 10):
            time.sleep(0.01)  # idle: the worker is blocked in its fetch
            sent = time.time()
            task.delay(key)
            _, started = client.blpop([key], timeout=10) or (None, b"nan")
            if i >= 10:  # the first few warm the worker up
                latencies.append(float(started) - sent)
    finally:
        _stop(procs)
    latencies.sort()
    return statistics.median(latencies), latencies[int(len(latencies) * 0.99) - 1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--url", default="redis://127.0.0.1:6379/15")
    parser.add_argument("--prefix", default="taskflow-bench")
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--slots", type=int, default=8)
    args = parser.parse_args()
    rows = run(args.tasks, args.url, args.prefix, args.samples, args.slots)
    width = max(len(label) for label, _ in rows)
    print(f"taskflow redis benchmark: {args.tasks:,} no-op tasks, {args.url}")
    for label, value in rows:
        print(f"  {label:<{width}}  {value}")


def run(tasks: int, base_url: str, prefix: str, samples: int, slots: int) -> list[tuple[str, str]]:
    """Every measurement, as (label, formatted value) rows."""
    url = f"{base_url}?prefix={prefix}"
    bench = build_app(url)
    stamps = redis.Redis.from_url(base_url)
    rows: list[tuple[str, str]] = []
    try:
        for label, rate in enqueue_rates(bench, tasks):
            rows.append((label, f"{rate:,.0f} tasks/s"))
        for label, name in (("stored", "bench.noop"), ("no result", "bench.noop_fire")):
            for processes in (1, 2):
                task = bench.registry.get(name)
                rate = drain_rate(bench, url, stamps, tasks, processes, slots, task)
                rows.append(
                    (
                        f"drain {processes} proc x {slots} slots ({label})",
                        f"{rate:,.0f} tasks/s",
                    )
                )
        for stored in (True, False):
            p50, p99 = pickup_latency(bench, url, stamps, samples, slots, stored)
            label = "stored" if stored else "no result"
            rows.append(
                (
                    f"pickup latency p50 / p99 ({label})",
                    f"{p50 * 1000:.2f} ms / {p99 * 1000:.2f} ms",
                )
            )
    finally:
        drop_keys(stamps, f"*{prefix}*")
        bench.close()
    return rows


if __name__ == "__main__":
    main()
