"""Benchmark of the NATS JetStream backend: enqueue rate, drain rate and pickup latency.

Run from the project root (as a module)::

    python -m bench.nats_backend [--tasks 20000] [--url nats://127.0.0.1:4222]
                         [--prefix taskflow-bench] [--samples 200] [--slots 8]
                         [--prefetch N] [--drains-only]

The same workload as ``bench/redis.py``: no-op tasks, results in JetStream KV (stored) or
not (fire and forget).

* enqueue rate with a ``delay()`` loop and with ``enqueue_many`` (batches of 1,000);
* drain rate with 1 worker process x ``--slots`` and with 2 processes: the queue is paused,
  filled, then resumed, and the clock runs until every message was acked; beside it, the
  CPU per task of the workers and (when it runs on this machine) of nats-server, in µs;
  ``--prefetch`` starts the workers with that option (default: theirs);
  ``--drains-only`` measures the drains alone;
* pickup latency p50/p99: the time from sending to the task body starting, on an idle
  worker (the body publishes its start time on a core NATS subject).

Workers are real ``taskflow worker`` processes started by this script. The prefix's
streams and buckets are deleted at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import nats
from nats.aio.client import Client

from bench._drain import wait_drained
from bench._keys import drop_prefix
from bench._procs import local_process, process_cpu, tree_cpu
from taskflow import App
from taskflow._nats.names import stream_name

URL = os.environ.get("BENCH_URL", "nats://127.0.0.1:4222?prefix=taskflow-bench")
ROOT = Path(__file__).resolve().parents[1]
STAMPS = "bench.stamps"

app = App("bench", broker=URL)
_nc: Client | None = None


@app.task(name="bench.noop")
async def noop() -> None:
    """Does nothing (result stored)."""


@app.task(name="bench.noop_fire", store_result=False)
async def noop_fire() -> None:
    """Does nothing (fire and forget)."""


@app.task(name="bench.stamp", store_result=False)
async def stamp(subject: str) -> None:
    """Publish the time the body started, for the latency measurement."""
    global _nc
    started = time.time()
    if _nc is None:
        _nc = await nats.connect(URL.split("?", 1)[0])
    await _nc.publish(subject, repr(started).encode())
    await _nc.flush()


def _worker(url: str, slots: int, prefetch: int | None = None) -> subprocess.Popen[bytes]:
    env = {**os.environ, "BENCH_URL": url, "PYTHONPATH": str(ROOT)}
    command = [
        sys.executable, "-m", "taskflow.cli.main", "worker", "-A", "bench.nats_backend:app",
        "-c", str(slots), "--loglevel", "warning",
    ]  # fmt: skip
    if prefetch is not None:
        command += ["--prefetch", str(prefetch)]
    return subprocess.Popen(command, cwd=ROOT, env=env)


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
    for proc in procs:
        proc.wait(30)


def _work_stream(url: str) -> str:
    """The work stream of the app at ``url`` (``nats://...?prefix=...``)."""
    prefix = url.partition("?")[2].partition("prefix=")[2].partition("&")[0]
    return f"TF_{stream_name(prefix)}_WORK"


async def _stream_messages(nc: Client, stream: str) -> int:
    info = await nc.jetstream().stream_info(stream)
    return int(info.state.messages)


def _left(bench: App, nc: Client, stream: str) -> dict[str, int]:
    """Messages still in the work stream (waiting or leased), in the shape of a depth.

    A drain waits on this, not on the broker's ``depth``, which reads the info of the
    queue's ten consumers, and on nats-server 2.9 each scans the stream (about 130 ms of
    the server's CPU for all ten with 30,000 messages waiting), which would take the
    server's CPU from the drain being measured. The stream's own count is kept by the
    server as it goes. This benchmark's prefix holds one queue, so the count is that
    queue's; nothing in it is scheduled.
    """
    left = bench.kernel.call(_stream_messages(nc, stream))
    return {"ready": left, "inflight": 0, "scheduled": 0}


def _warm(bench: App, processes: int) -> None:
    """Wait until the workers run tasks (one round trip per process, then a margin)."""
    for _ in range(processes):
        bench.send_task("bench.noop").get(timeout=30)
    time.sleep(1.0)


def enqueue_rates(bench: App, tasks: int) -> list[tuple[str, float]]:
    """Tasks per second with a delay() loop and with enqueue_many, stored or not."""
    rows = []
    for label, name in (("stored", "bench.noop"), ("no result", "bench.noop_fire")):
        task: Any = bench.registry.get(name)
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
    bench: App,
    url: str,
    tasks: int,
    processes: int,
    slots: int,
    task: Any,
    prefetch: int | None = None,
) -> tuple[float, float, float | None]:
    """Tasks per second drained by ``processes`` worker processes, and the CPU per task
    of the workers and of nats-server (None when it does not run here), in µs."""
    procs = [_worker(url, slots, prefetch) for _ in range(processes)]
    server = local_process("nats-server")
    try:
        _warm(bench, processes)
        bench.kernel.call(bench.broker.pause("default"))  # type: ignore[attr-defined]
        for _ in range(0, tasks, 1000):
            bench.enqueue_many([task.s() for _ in range(1000)])
        nc = bench.kernel.call(nats.connect(url.split("?", 1)[0]))
        try:
            stream = _work_stream(url)
            workers0 = sum(tree_cpu(p.pid)[0] for p in procs)
            server0 = 0.0 if server is None else process_cpu(server)
            started = time.perf_counter()
            bench.kernel.call(bench.broker.resume("default"))  # type: ignore[attr-defined]
            took = wait_drained(lambda: _left(bench, nc, stream), started, tasks)
            workers = (sum(tree_cpu(p.pid)[0] for p in procs) - workers0) / tasks * 1e6
            if server is None:
                return tasks / took, workers, None
            return tasks / took, workers, (process_cpu(server) - server0) / tasks * 1e6
        finally:
            bench.kernel.call(nc.close())
    finally:
        _stop(procs)


async def _collect(server: str, subject: str, box: asyncio.Queue[float]) -> Client:
    nc = await nats.connect(server)

    async def on_stamp(msg: Any) -> None:
        box.put_nowait(float(msg.data))

    await nc.subscribe(subject, cb=on_stamp)
    await nc.flush()
    return nc


def pickup_latency(bench: App, url: str, samples: int, slots: int) -> tuple[float, float]:
    """p50 and p99 seconds from delay() to the body starting on an idle worker."""
    procs = [_worker(url, slots)]
    box: asyncio.Queue[float] = asyncio.Queue()
    nc = bench.kernel.call(_collect(url.split("?", 1)[0], STAMPS, box))
    latencies = []
    try:
        _warm(bench, 1)
        for i in range(samples + 10):
            time.sleep(0.01)  # idle: the worker is blocked in its fetch
            sent = time.time()
            bench.send_task("bench.stamp", args=(STAMPS,))
            started = bench.kernel.call(asyncio.wait_for(box.get(), 10))
            if i >= 10:  # the first few warm the worker up
                latencies.append(started - sent)
    finally:
        _stop(procs)
        bench.kernel.call(nc.close())
    latencies.sort()
    return statistics.median(latencies), latencies[int(len(latencies) * 0.99) - 1]


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--url", default="nats://127.0.0.1:4222")
    parser.add_argument("--prefix", default="taskflow-bench")
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--slots", type=int, default=8)
    parser.add_argument("--prefetch", type=int, default=None)
    parser.add_argument("--drains-only", action="store_true")
    args = parser.parse_args()
    rows = run(
        args.tasks,
        args.url,
        args.prefix,
        args.samples,
        args.slots,
        prefetch=args.prefetch,
        drains_only=args.drains_only,
    )
    width = max(len(label) for label, _ in rows)
    print(f"taskflow nats benchmark: {args.tasks:,} no-op tasks, {args.url}")
    for label, value in rows:
        print(f"  {label:<{width}}  {value}")


def run(
    tasks: int,
    base_url: str,
    prefix: str,
    samples: int,
    slots: int,
    *,
    prefetch: int | None = None,
    drains_only: bool = False,
) -> list[tuple[str, str]]:
    """Every measurement, as (label, formatted value) rows."""
    url = f"{base_url}?prefix={prefix}"
    global app, URL
    URL = url
    app = App("bench", broker=url)
    for t in (noop, noop_fire, stamp):
        app.registry.add(type(t)(app.kernel, t.fn, t.name, t.options))
    rows: list[tuple[str, str]] = []
    app.kernel.call(app.kernel.connect())
    try:
        if not drains_only:
            for label, rate in enqueue_rates(app, tasks):
                rows.append((label, f"{rate:,.0f} tasks/s"))
        for label, name in (("stored", "bench.noop"), ("no result", "bench.noop_fire")):
            for processes in (1, 2):
                task = app.registry.get(name)
                rate, workers, server = drain_rate(
                    app, url, tasks, processes, slots, task, prefetch
                )
                cpu = f"workers {workers:.0f} µs/task"
                if server is not None:
                    cpu += f", nats-server {server:.0f}"
                rows.append(
                    (
                        f"drain {processes} proc x {slots} slots ({label})",
                        f"{rate:,.0f} tasks/s ({cpu})",
                    )
                )
        if not drains_only:
            p50, p99 = pickup_latency(app, url, samples, slots)
            rows.append(
                ("pickup latency p50 / p99 (delay)", f"{p50 * 1000:.2f} ms / {p99 * 1000:.2f} ms")
            )
    finally:
        app.close()
        drop_prefix(base_url, prefix)
    return rows


if __name__ == "__main__":
    main()
