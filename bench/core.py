"""Core overhead benchmark: no-op tasks through the in-process memory path.

    python bench/core.py [--n 20000] [--runs 3] [--concurrency 64] [--queued 100000]

For sync and async no-op tasks with results stored, prints the enqueue rate
(``enqueue_many`` in batches of 1,000), the drain rate of a started worker and the per-task
overhead in microseconds, each the median of ``--runs`` runs; then the resident memory of
``--queued`` tasks waiting in the memory broker (with their queued records).
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

from taskflow import App


def _rss_mb() -> float:
    with open(f"/proc/{os.getpid()}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _make_app(kind: str) -> tuple[App, Callable[..., Any]]:
    app = App(f"bench-{kind}")
    if kind == "async":

        @app.task(name="bench.noop")
        async def anoop() -> None:
            return None

        return app, anoop

    @app.task(name="bench.noop")
    def noop() -> None:
        return None

    return app, noop


def one_run(kind: str, n: int, concurrency: int) -> tuple[float, float]:
    """Returns (enqueue tasks/s, drain tasks/s)."""
    app, task = _make_app(kind)
    sigs = [task.s() for _ in range(n)]
    t0 = time.perf_counter()
    for k in range(0, n, 1000):
        app.enqueue_many(sigs[k : k + 1000])
    enqueue = n / (time.perf_counter() - t0)
    worker = app.worker(concurrency=concurrency)
    t1 = time.perf_counter()
    worker.start()
    while worker.counts.processed < n:
        time.sleep(0.001)
    drain = n / (time.perf_counter() - t1)
    worker.stop()
    app.close()
    return enqueue, drain


def queued_memory(count: int) -> float:
    """RSS growth (MB) for ``count`` tasks sitting in the memory broker."""
    app, task = _make_app("sync")
    app.enqueue_many([task.s()])  # start the runtime before measuring
    gc.collect()
    before = _rss_mb()
    for k in range(0, count, 1000):
        app.enqueue_many([task.s() for _ in range(min(1000, count - k))])
    gc.collect()
    grown = _rss_mb() - before
    app.close()
    return grown


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--queued", type=int, default=100_000)
    args = parser.parse_args()
    print(
        f"memory broker + memory results, {args.n} no-op tasks, concurrency "
        f"{args.concurrency}, median of {args.runs} runs"
    )
    print(f"{'body':<6} {'enqueue/s':>12} {'drain/s':>12} {'overhead µs':>12}")
    for kind in ("async", "sync"):
        runs = [one_run(kind, args.n, args.concurrency) for _ in range(args.runs)]
        enq = statistics.median(r[0] for r in runs)
        drain = statistics.median(r[1] for r in runs)
        print(f"{kind:<6} {enq:>12,.0f} {drain:>12,.0f} {1e6 / drain:>12.1f}")
    mb = queued_memory(args.queued)
    print(f"{args.queued:,} queued tasks (broker + queued records): {mb:.1f} MB resident")


if __name__ == "__main__":
    main()
