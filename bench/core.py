"""Core overhead benchmark: no-op tasks through the in-process memory path.

    python bench/core.py [--n 20000] [--runs 3] [--concurrency 64] [--queued 100000]
                         [--threads] [--hook none|sync|async]

For sync and async no-op tasks with results stored, prints the enqueue rate
(``enqueue_many`` in batches of 1,000), the drain rate of a started worker and the per-task
overhead in microseconds, each the median of ``--runs`` runs; then the resident memory of
``--queued`` tasks waiting in the memory broker (with their queued records). With
``--threads``, also where each drain's CPU time went, per task: the event loop's thread, the
threads that run sync bodies, the rest of the process, and the voluntary context switches
of all of them (read from ``/proc/self/task``; Linux only). With ``--hook sync`` or
``--hook async``, the app has one no-op ``success`` hook of that kind (a plain function
runs on the hook threads, a coroutine on the loop).
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import threading
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


def _make_app(kind: str, hook: str = "none") -> tuple[App, Callable[..., Any]]:
    app = App(f"bench-{kind}")
    if hook == "sync":
        app.hook("success")(lambda event: None)
    elif hook == "async":

        @app.hook("success")
        async def on_success(event: Any) -> None:
            return None

    if kind == "async":

        @app.task(name="bench.noop")
        async def anoop() -> None:
            return None

        return app, anoop

    @app.task(name="bench.noop")
    def noop() -> None:
        return None

    return app, noop


_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _threads() -> dict[int, tuple[float, int]]:
    """CPU seconds and voluntary context switches of each thread of this process."""
    out: dict[int, tuple[float, int]] = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            with open(f"/proc/self/task/{tid}/status") as fh:
                switches = next(
                    int(line.split()[1]) for line in fh if line.startswith("voluntary_ctxt")
                )
        except (OSError, StopIteration):
            continue  # ended meanwhile
        out[int(tid)] = ((int(fields[11]) + int(fields[12])) / _TICK, switches)
    return out


def _split(
    before: dict[int, tuple[float, int]], after: dict[int, tuple[float, int]], n: int
) -> dict[str, float]:
    """Per task: CPU µs of the loop thread, of the body threads, of the rest; switches."""
    names = {t.native_id: t.name for t in threading.enumerate()}
    cpu = {"loop": 0.0, "bodies": 0.0, "other": 0.0}
    switches = 0
    for tid, (seconds, count) in after.items():
        was = before.get(tid, (0.0, 0))
        # The app's loop thread is "taskflow-<app>", its body threads "taskflow-<app>_N".
        name = names.get(tid, "")
        role = "other"
        if name.startswith("taskflow-bench-"):
            role = "bodies" if "_" in name else "loop"
        cpu[role] += seconds - was[0]
        switches += count - was[1]
    result = {role: seconds / n * 1e6 for role, seconds in cpu.items()}
    result["switches"] = switches / n
    return result


def one_run(
    kind: str,
    n: int,
    concurrency: int,
    threads: list[dict[str, float]] | None = None,
    hook: str = "none",
) -> tuple[float, float]:
    """Returns (enqueue tasks/s, drain tasks/s); with ``threads``, appends the drain's
    CPU time per task by thread (see :func:`_split`)."""
    app, task = _make_app(kind, hook)
    sigs = [task.s() for _ in range(n)]
    t0 = time.perf_counter()
    for k in range(0, n, 1000):
        app.enqueue_many(sigs[k : k + 1000])
    enqueue = n / (time.perf_counter() - t0)
    worker = app.worker(concurrency=concurrency)
    before = _threads() if threads is not None else {}
    t1 = time.perf_counter()
    worker.start()
    while worker.counts.processed < n:
        time.sleep(0.001)
    drain = n / (time.perf_counter() - t1)
    if threads is not None:
        threads.append(_split(before, _threads(), n))
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
    parser.add_argument("--threads", action="store_true", help="CPU per task by thread")
    parser.add_argument("--hook", choices=("none", "sync", "async"), default="none")
    args = parser.parse_args()
    print(
        f"memory broker + memory results, {args.n} no-op tasks, concurrency "
        f"{args.concurrency}, median of {args.runs} runs, success hook: {args.hook}"
    )
    print(f"{'body':<6} {'enqueue/s':>12} {'drain/s':>12} {'overhead µs':>12}")
    split: dict[str, list[dict[str, float]]] = {}
    for kind in ("async", "sync"):
        threads: list[dict[str, float]] | None = [] if args.threads else None
        runs = [
            one_run(kind, args.n, args.concurrency, threads, args.hook) for _ in range(args.runs)
        ]
        enq = statistics.median(r[0] for r in runs)
        drain = statistics.median(r[1] for r in runs)
        print(f"{kind:<6} {enq:>12,.0f} {drain:>12,.0f} {1e6 / drain:>12.1f}")
        if threads is not None:
            split[kind] = threads
    for kind, shares in split.items():
        cells = ", ".join(
            f"{key} {statistics.median(r[key] for r in shares):.1f}"
            for key in ("loop", "bodies", "other")
        )
        switches = statistics.median(r["switches"] for r in shares)
        print(f"{kind} drain, CPU µs per task by thread: {cells}; {switches:.2f} switches/task")
    mb = queued_memory(args.queued)
    print(f"{args.queued:,} queued tasks (broker + queued records): {mb:.1f} MB resident")


if __name__ == "__main__":
    main()
