"""Drains of real workers on Redis: the two pools for sync bodies, or async def bodies.

Run from the project root (as a module, so ``import redis`` finds the library)::

    python -m bench.pools [--tasks 20000] [--url redis://127.0.0.1:6379/15] [--store] [--fail]
                          [--async-bodies] [--threads] [--log]
                          [--configs "-c 8" "-P 2 -c 16" "-c 2 --pool processes"]

``--tasks``    sync tasks per drain (default 20,000); each body does one ``INCR`` on Redis,
               as in the shared peer harness
``--url``      Redis server and database (default DB 15); keys live under the prefix
               ``taskflow-pools`` and are deleted at the end
``--store``    the tasks store their results (in Redis, beside the broker); by default
               they are fire-and-forget, as in the peer harness's drain
``--fail``     every body raises after its ``INCR`` (no retries): each task is recorded
               failed (with ``--store``) and dead-lettered
``--async-bodies``  ``async def`` bodies instead, each awaiting its ``INCR`` through
               redis-py's asyncio client (as the peer harness's async configurations
               do): for the drain of ``async def`` tasks and the CPU it takes
``--log``      every sync body logs one WARNING line after its ``INCR``, which the workers
               write as JSON (``--log-format json``) to /dev/null: what a log line costs on
               each pool (on the process pool it crosses from the child to the worker)
``--configs``  ``taskflow worker`` options, one drain each (default: the thread pool in one
               process with 8 slots and in two with 16, the process pool with 2 and 4
               children)
``--threads``  also split the workers' CPU time by thread: the threads that ran before the
               drain (each process's event loop, its main thread; the process pool's
               children) and those it started (the threads of sync bodies), each with
               its voluntary context switches (a thread that waits: for a lock, the
               interpreter's lock, a reply) per task

For each configuration, real ``taskflow worker`` processes start and subscribe (the time
this takes is printed as start-up), the queue is paused, filled, then resumed, and the
clock runs until every message was acked. Printed: the drain rate, and the CPU time per
task of the worker processes with all their children (``/proc``), of the process pool's
children among them (the rest is the workers' own loops), and of the Redis server; how
many Lua script calls (``EVALSHA``, pipelined or not) Redis ran per task; the resident
memory of the worker processes with their children as the drain ends; and the share of
the machine's CPU time that sat idle during the drain (``/proc/stat``, all CPUs: with the
worker and Redis on one machine, time in which every thread waited).
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import redis

from bench._drain import wait_drained
from bench._incr_app import build_app, fill
from bench._keys import drop_keys
from bench._procs import (
    idle_share,
    machine_idle,
    server_cpu,
    split,
    thread_times,
    tree_cpu,
    tree_rss,
)
from bench.redis_backend import _depth, _stop, _wait_consumers
from taskflow import App

ROOT = Path(__file__).resolve().parents[1]


def _script_calls(client: redis.Redis) -> int:
    """``EVALSHA`` calls the server has run since its statistics were last reset."""
    stats = client.info("commandstats").get("cmdstat_evalsha", {})
    return int(stats.get("calls", 0))


def _processes(options: str) -> int:
    words = shlex.split(options)
    return int(words[words.index("-P") + 1]) if "-P" in words else 1


@dataclass(frozen=True)
class Drain:
    """What one drain measured: its start-up, its rate, the CPU time per task (of the
    worker, all its processes; of the process pool's children among them; of Redis),
    the script calls per task, the workers' resident memory as it ended, with
    ``threads`` the split by thread (:func:`bench._procs.split`), and the share of the
    machine's CPU time that sat idle during the drain (percent)."""

    startup: float
    rate: float
    cpu: float
    children: float
    server: float
    scripts: float
    rss: float
    threads: tuple[float, float, float, float] | None
    idle: float


def drain(
    bench: App,
    url: str,
    options: str,
    tasks: int,
    store: bool = False,
    fail: bool = False,
    aio: bool = False,
    threads: bool = False,
    log: bool = False,
) -> Drain:
    """Drain ``tasks`` tasks with ``taskflow worker`` started with ``options``."""
    env = {
        **os.environ,
        "BENCH_URL": url,
        "BENCH_STORE": "1" if store else "0",
        "BENCH_FAIL": "1" if fail else "0",
        "BENCH_ASYNC": "1" if aio else "0",
        "BENCH_LOG": "1" if log else "0",
        "PYTHONPATH": str(ROOT),
    }
    command = [
        sys.executable, "-m", "taskflow.cli.main", "worker", "-A", "bench._incr_app:app",
        "--loglevel", "warning", *(["--log-format", "json"] if log else []),
        *shlex.split(options),
    ]  # fmt: skip
    client = redis.Redis.from_url(url.split("?", 1)[0])
    started = time.perf_counter()
    stderr = subprocess.DEVNULL if log else None
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stderr=stderr)
    try:
        _wait_consumers(client, bench, _processes(options))
        startup = time.perf_counter() - started
        bench.kernel.call(bench.broker.pause("default"))  # type: ignore[attr-defined]
        fill(bench, tasks)
        (cpu0, kids0), redis0 = tree_cpu(proc.pid), server_cpu(client)
        calls0 = _script_calls(client)
        threads0 = thread_times(proc.pid) if threads else {}
        idle0 = machine_idle()
        began = time.perf_counter()
        bench.kernel.call(bench.broker.resume("default"))  # type: ignore[attr-defined]
        seconds = wait_drained(lambda: _depth(bench), began, tasks)
        idle1 = machine_idle()
        (cpu1, kids1), redis1 = tree_cpu(proc.pid), server_cpu(client)
        calls1 = _script_calls(client)
        rss = tree_rss(proc.pid)
        by_thread = split(threads0, thread_times(proc.pid), tasks) if threads else None
    finally:
        _stop([proc])
        client.close()
    per_task = 1e6 / tasks
    return Drain(
        startup,
        tasks / seconds,
        (cpu1 - cpu0) * per_task,
        (kids1 - kids0) * per_task,
        (redis1 - redis0) * per_task,
        (calls1 - calls0) / tasks,
        rss,
        by_thread,
        idle_share(idle0, idle1),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--url", default="redis://127.0.0.1:6379/15")
    parser.add_argument("--store", action="store_true")
    parser.add_argument("--fail", action="store_true")
    parser.add_argument("--async-bodies", action="store_true")
    parser.add_argument("--threads", action="store_true")
    parser.add_argument("--log", action="store_true")
    parser.add_argument(
        "--configs",
        nargs="+",
        default=["-c 8", "-P 2 -c 16", "-c 2 --pool processes", "-c 4 --pool processes"],
    )
    args = parser.parse_args()
    url = f"{args.url}?prefix=taskflow-pools"
    bench = build_app(url, args.store, args.fail, args.async_bodies, args.log)
    client = redis.Redis.from_url(args.url)
    bench.kernel.call(bench.kernel.connect())
    what = "one INCR each" + (", results stored" if args.store else "")
    what += ", each failing" if args.fail else ""
    what += ", each logging a line" if args.log else ""
    kind = "async def" if args.async_bodies else "sync"
    print(f"taskflow pools benchmark: {args.tasks:,} {kind} tasks ({what}), {args.url}")
    print(f"{'worker options':34}{'start-up s':>12}{'drain/s':>10}{'worker µs/task':>16}"
          f"{'of it children':>16}{'Redis µs/task':>15}{'scripts/task':>14}"
          f"{'RSS MB':>8}{'idle %':>8}")  # fmt: skip
    try:
        for options in args.configs:
            d = drain(
                bench,
                url,
                options,
                args.tasks,
                args.store,
                args.fail,
                args.async_bodies,
                args.threads,
                args.log,
            )
            print(f"{options:34}{d.startup:12.2f}{d.rate:10,.0f}{d.cpu:16.1f}{d.children:16.1f}"
                  f"{d.server:15.1f}{d.scripts:14.2f}{d.rss:8.1f}{d.idle:8.1f}",
                  flush=True)  # fmt: skip
            if d.threads is not None:
                before, waits, started, started_waits = d.threads
                print(f"  threads before the drain: {before:.1f} µs, {waits:.2f} waits per "
                      f"task; started by it: {started:.1f} µs, {started_waits:.2f} waits per "
                      "task", flush=True)  # fmt: skip
    finally:
        drop_keys(client, "*taskflow-pools*")
        client.close()
        bench.close()


if __name__ == "__main__":
    main()
