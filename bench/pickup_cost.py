"""What one pickup costs on Redis: its latency, and the CPU time of each process it takes.

Run from the project root (as a module)::

    python -m bench.pickup_cost [--trips 2000] [--rounds 3] [--sync] [--slowlog]
                                [--cpu-affinity auto] [--scheduling batch|normal]
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
``--cpu-affinity auto`` starts the worker with that option (its threads on one CPU);
``--scheduling`` with that one (by default the worker's own default, ``batch`` on Linux).
``--slowlog`` adds a round of at most 1,000 trips with the server's slow log set to record
every command (``CONFIG SET slowlog-log-slower-than 0``; the settings are put back after),
and prints how long the server took per call of each script and command, p50 and mean, and
how many of each a trip made: use a server nobody else uses. Keys live under the prefix
``taskflow-pickup`` and are deleted at the end.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import redis
import redis.asyncio as aioredis

from bench._keys import drop_keys
from bench._procs import server_cpu, tree_cpu
from bench.redis_backend import _stop, _wait_consumers
from taskflow import App, Task
from taskflow._redis.scripts import BROKER_SCRIPTS, RESULT_SCRIPTS, load_script

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


def build_app(url: str, sync: bool) -> tuple[App, Task[[int], None]]:
    """The benchmark app and its one task, which stores its result, sync or ``async def``."""
    bench = App("pickup", broker=url)
    if sync:
        return bench, bench.task(name="pickup.lat")(_lat)
    return bench, bench.task(name="pickup.lat")(_alat)


app, _ = build_app(URL, os.environ.get("BENCH_PICKUP_SYNC") == "1")


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _server_times(client: redis.Redis, trips: int, trip: Callable[[], float]) -> None:
    """Make ``trips`` trips with every command in the server's slow log; print the server's
    time per call of each script and command, and the calls per trip."""
    names = {
        hashlib.sha1(load_script(name).encode()).hexdigest(): name
        for name in (*BROKER_SCRIPTS, *RESULT_SCRIPTS)
    }
    kept = client.config_get("slowlog-*")
    # About 35 entries a trip: the scripts and each command they run, the waits, the body's.
    room = 50 * trips
    client.config_set("slowlog-max-len", room)
    client.config_set("slowlog-log-slower-than", 0)
    try:
        client.slowlog_reset()
        for _ in range(trips):
            trip()
        entries = client.slowlog_get(room)
    finally:
        client.config_set("slowlog-log-slower-than", str(kept["slowlog-log-slower-than"]))
        client.config_set("slowlog-max-len", str(kept["slowlog-max-len"]))
        client.slowlog_reset()
    took: dict[str, list[int]] = collections.defaultdict(list)
    for entry in entries:
        words = entry["command"].split()
        name = words[0].decode().lower()
        if name in ("evalsha", "eval") and len(words) > 1:
            name = f"{name} {names.get(words[1].decode(), 'other')}"
        elif name in ("slowlog", "config"):
            continue
        took[name].append(int(entry["duration"]))
    print(f"server time per call over {trips:,} trips (slow log, µs):")
    print(f"{'command':24}{'per trip':>10}{'p50':>8}{'mean':>8}")
    for name, times in sorted(took.items(), key=lambda kv: -sum(kv[1])):
        print(f"{name:24}{len(times) / trips:10.2f}{statistics.median(times):8.1f}"
              f"{statistics.fmean(times):8.1f}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    parser.add_argument("--trips", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sync", action="store_true")
    parser.add_argument("--slowlog", action="store_true")
    parser.add_argument("--cpu-affinity", choices=["off", "auto"], default="off")
    parser.add_argument("--scheduling", choices=["batch", "normal"], default=None)
    parser.add_argument("--url", default="redis://127.0.0.1:6379/15")
    args = parser.parse_args()
    url = f"{args.url}?prefix=taskflow-pickup"
    bench, task = build_app(url, args.sync)
    client = redis.Redis.from_url(args.url)
    env = {
        **os.environ,
        "BENCH_URL": url,
        "BENCH_PICKUP_SYNC": "1" if args.sync else "0",
        "PYTHONPATH": str(ROOT),
    }
    command = [
        sys.executable, "-m", "taskflow.cli.main", "worker", "-A", "bench.pickup_cost:app",
        "--loglevel", "warning", "-c", "8", "--cpu-affinity", args.cpu_affinity,
    ]  # fmt: skip
    if args.scheduling is not None:
        command += ["--scheduling", args.scheduling]
    body = "sync" if args.sync else "async def"
    body += ", --cpu-affinity auto" if args.cpu_affinity == "auto" else ""
    body += f", --scheduling {args.scheduling}" if args.scheduling else ""
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
            worker0, redis0 = tree_cpu(proc.pid)[0], server_cpu(client)
            producer0 = time.process_time()
            trips = [trip() for _ in range(args.trips)]
            producer1 = time.process_time()
            worker1, redis1 = tree_cpu(proc.pid)[0], server_cpu(client)
            per = 1e6 / args.trips
            print(f"{n:5}{_pct(trips, 0.5):9.3f}{_pct(trips, 0.9):9.3f}{_pct(trips, 0.99):9.3f}"
                  f"{(producer1 - producer0) * per:13.0f}{(worker1 - worker0) * per:11.0f}"
                  f"{(redis1 - redis0) * per:10.0f}", flush=True)  # fmt: skip
        if args.slowlog:
            _server_times(client, min(args.trips, 1000), trip)
    finally:
        _stop([proc])
        drop_keys(client, "*taskflow-pickup*")
        client.close()
        bench.close()


if __name__ == "__main__":
    main()
