"""What one pickup costs on Redis: its latency, and the CPU time of each process it takes.

Run from the project root (as a module)::

    python -m bench.pickup_cost [--trips 2000] [--rounds 3] [--sync]
                                [--url redis://127.0.0.1:6379/15]

A real ``taskflow worker`` process (8 slots) serves one task that stores its result (as
the peer harness's latency task does); this process sends one call at a time with
``delay()`` and waits (``BLPOP``) for the body's ``LPUSH``, as the harness's latency
workload does, ``--trips`` times per round after a warm-up. Printed per round: the round
trip's p50 / p90 / p99 in milliseconds, and the CPU time per trip of the producer (this
process), of the worker (with all its threads) and of the Redis server, in microseconds.
At this rate the three take turns on the CPUs: what one of them spends on a pickup, the
others may wait for.

``--sync`` times a plain ``def`` body (on the worker's threads), else ``async def``.
Keys live under the prefix ``taskflow-pickup`` and are deleted at the end.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import redis
import redis.asyncio as aioredis

from bench._keys import drop_keys
from bench.pools import _redis_cpu, _tree_cpu
from bench.redis_backend import _stop, _wait_consumers
from taskflow import App

URL = os.environ.get("BENCH_URL", "redis://127.0.0.1:6379/15?prefix=taskflow-pickup")
ROOT = Path(__file__).resolve().parents[1]
_signal = redis.Redis.from_url(URL.split("?", 1)[0])
_asignal = aioredis.Redis.from_url(URL.split("?", 1)[0])


def _key(i: int) -> str:
    return f"taskflow-pickup:lat:{i}"


def _lat(i: int) -> None:
    """The body: one LPUSH the producer waits for (a sync client, on a body thread)."""
    _signal.lpush(_key(i), 1)


async def _alat(i: int) -> None:
    """:func:`_lat` with the asyncio client, on the worker's loop."""
    await _asignal.lpush(_key(i), 1)


def build_app(url: str, sync: bool) -> App:
    """The benchmark app: one task that stores its result, sync or ``async def``."""
    bench = App("pickup", broker=url)
    bench.task(name="pickup.lat")(_lat if sync else _alat)
    return bench


app = build_app(URL, os.environ.get("BENCH_PICKUP_SYNC") == "1")


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    parser.add_argument("--trips", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sync", action="store_true")
    parser.add_argument("--url", default="redis://127.0.0.1:6379/15")
    args = parser.parse_args()
    url = f"{args.url}?prefix=taskflow-pickup"
    bench = build_app(url, args.sync)
    task = bench.registry.get("pickup.lat")
    assert task is not None
    client = redis.Redis.from_url(args.url)
    env = {
        **os.environ,
        "BENCH_URL": url,
        "BENCH_PICKUP_SYNC": "1" if args.sync else "0",
        "PYTHONPATH": str(ROOT),
    }
    command = [
        sys.executable, "-m", "taskflow.cli.main", "worker", "-A", "bench.pickup_cost:app",
        "--loglevel", "warning", "-c", "8",
    ]  # fmt: skip
    body = "sync" if args.sync else "async def"
    print(f"taskflow pickup cost: {args.trips:,} trips x {args.rounds} rounds, {body} body, "
          f"{args.url}")  # fmt: skip
    print(f"{'round':>5}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}"
          f"{'producer µs':>13}{'worker µs':>11}{'Redis µs':>10}")  # fmt: skip
    bench.kernel.call(bench.kernel.connect())
    proc = subprocess.Popen(command, cwd=ROOT, env=env)
    sent = 0

    def trip() -> float:
        nonlocal sent
        sent += 1
        began = time.perf_counter()
        task.delay(sent)
        while client.blpop([_key(sent)], timeout=1) is None:
            if proc.poll() is not None:
                raise RuntimeError("the worker exited")
        return (time.perf_counter() - began) * 1000.0

    try:
        _wait_consumers(client, bench, 1)
        for _ in range(100):
            trip()
        for n in range(1, args.rounds + 1):
            worker0, redis0 = _tree_cpu(proc.pid)[0], _redis_cpu(client)
            producer0 = time.process_time()
            trips = [trip() for _ in range(args.trips)]
            producer1 = time.process_time()
            worker1, redis1 = _tree_cpu(proc.pid)[0], _redis_cpu(client)
            per = 1e6 / args.trips
            print(f"{n:5}{_pct(trips, 0.5):9.3f}{_pct(trips, 0.9):9.3f}{_pct(trips, 0.99):9.3f}"
                  f"{(producer1 - producer0) * per:13.0f}{(worker1 - worker0) * per:11.0f}"
                  f"{(redis1 - redis0) * per:10.0f}", flush=True)  # fmt: skip
    finally:
        _stop([proc])
        drop_keys(client, "*taskflow-pickup*")
        client.close()
        bench.close()


if __name__ == "__main__":
    main()
