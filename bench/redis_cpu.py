"""CPU time and Redis commands per task of a Redis worker process, and enqueue cost.

Run from the project root (as a module)::

    python -m bench.redis_cpu [--tasks 20000] [--slots 16] [--url redis://127.0.0.1:6379/15]
                              [--kind sync|async] [--stored] [--profile FILE]
                              [--skip-enqueue]

Rates measured on a busy machine say little; the CPU time a worker process spends per task
depends far less on the machine's load, and the Redis commands it sends per task not at
all. The queue is paused,
filled with ``--tasks`` no-op tasks (``enqueue_many``), and resumed; one ``taskflow worker``
process with ``--slots`` slots drains it. Printed:

* the worker process's CPU time per task (user + system, from ``/proc/PID/stat``, between
  the resume and the last ack), and the drain rate (wall clock, for reference only);
* Redis commands per task (``INFO commandstats``, every client of the server: run it on a
  Redis nobody else uses for exact counts). Redis counts the commands a script runs as
  well as the script call (``evalsha``): the ``evalsha`` line is the script round trips;
* the calling process's CPU time per ``delay()`` and per task of ``enqueue_many``.

``--kind`` chooses ``def`` or ``async def`` bodies; ``--stored`` stores results (three
record writes per task) instead of fire-and-forget tasks. ``--profile FILE`` samples the
worker with ``py-spy record`` (``pip install py-spy``) while it drains and writes the
collapsed stacks to FILE (one line per stack and its sample count; with ``--gil``, so only
the thread that holds the GIL is sampled: waits are not counted; and ``--nonblocking``,
so the worker is not stopped for each sample: stopped, it showed lines that make a system
call many times above their cost, such as ``asyncio.get_running_loop()``, 0.1 µs, in a
quarter of the samples). ``--skip-enqueue`` leaves
out the enqueue measurement.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import redis

from bench._keys import drop_keys
from taskflow import App, Task

URL = os.environ.get("BENCH_URL", "redis://127.0.0.1:6379/15?prefix=taskflow-cpu")
ROOT = Path(__file__).resolve().parents[1]
_TICK = os.sysconf("SC_CLK_TCK")


def _noop() -> None:
    """Does nothing."""


async def _anoop() -> None:
    """Does nothing."""


def build_app(url: str) -> tuple[App, dict[str, Task[..., Any]]]:
    """The benchmark app and its tasks: sync and async no-ops, stored and fire-and-forget."""
    bench = App("bench-cpu", broker=url)
    tasks: dict[str, Task[..., Any]] = {
        "cpu.sync": bench.task(name="cpu.sync")(_noop),
        "cpu.sync_fire": bench.task(name="cpu.sync_fire", store_result=False)(_noop),
        "cpu.async": bench.task(name="cpu.async")(_anoop),
        "cpu.async_fire": bench.task(name="cpu.async_fire", store_result=False)(_anoop),
    }
    return bench, tasks


app, _ = build_app(URL)


def _cpu(pid: int) -> float:
    """User + system CPU seconds of process ``pid``."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def _commands(client: redis.Redis) -> dict[str, int]:
    stats = client.info("commandstats")
    return {name: int(value["calls"]) for name, value in stats.items()}


def _delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0) > 0}


def _depth(bench: App) -> int:
    depth = bench.kernel.call(bench.broker.depth("default"))  # type: ignore[attr-defined]
    return int(depth["ready"] + depth["inflight"] + depth["scheduled"])


def drain(
    bench: App, task: Task[..., Any], url: str, client: redis.Redis, args: argparse.Namespace
) -> None:
    """Fill the paused queue, resume it, and measure the worker process while it drains."""
    name = task.name
    env = {**os.environ, "BENCH_URL": url, "PYTHONPATH": str(ROOT)}
    command = [
        sys.executable, "-m", "taskflow.cli.main", "worker", "-A", "bench.redis_cpu:app",
        "-c", str(args.slots), "-P", "1", "--loglevel", "warning",
    ]  # fmt: skip
    proc = subprocess.Popen(command, cwd=ROOT, env=env)
    try:
        channel = bench.broker.key("control")  # type: ignore[attr-defined]
        deadline = time.monotonic() + 30
        while client.pubsub_numsub(channel)[0][1] < 1:
            if time.monotonic() > deadline:
                raise SystemExit("the worker did not start")
            time.sleep(0.05)
        bench.kernel.call(bench.broker.pause("default"))  # type: ignore[attr-defined]
        for k in range(0, args.tasks, 1000):
            bench.enqueue_many([task.s() for _ in range(min(1000, args.tasks - k))])
        time.sleep(0.5)  # let the worker settle into its idle wait
        spy = None
        if args.profile:
            # py-spy installed beside this interpreter (a venv not activated) or on PATH.
            spy_bin = shutil.which("py-spy", path=os.path.dirname(sys.executable)) or "py-spy"
            spy_cmd = [spy_bin, "record", "--pid", str(proc.pid), "--format", "raw"]
            spy_cmd += ["--gil", "--nonblocking", "--rate", "500", "--output", args.profile]
            spy = subprocess.Popen(spy_cmd, stdout=subprocess.DEVNULL)
            time.sleep(1.0)
        cpu0, cmds0, t0 = _cpu(proc.pid), _commands(client), time.perf_counter()
        bench.kernel.call(bench.broker.resume("default"))  # type: ignore[attr-defined]
        while _depth(bench):
            time.sleep(0.005)
        elapsed = time.perf_counter() - t0
        cpu, cmds = _cpu(proc.pid) - cpu0, _delta(cmds0, _commands(client))
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait(60)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    n = args.tasks
    print(f"drain, {name}, 1 process x {args.slots} slots, {n:,} tasks")
    print(f"  worker CPU per task   {cpu / n * 1e6:8.1f} us")
    print(f"  drain rate            {n / elapsed:8,.0f} tasks/s (wall clock; busy machine)")
    total = sum(cmds.values())
    print(f"  Redis commands/task   {total / n:8.2f}  (all clients, including this one's polls)")
    for cmd, calls in sorted(cmds.items(), key=lambda kv: -kv[1])[:8]:
        print(f"    {cmd:<28} {calls / n:6.2f}")


def enqueue(
    bench: App, task: Task[..., Any], client: redis.Redis, args: argparse.Namespace
) -> None:
    """CPU time of this process per delay() and per enqueue_many task."""
    name = task.name
    task.delay()  # warm up the connection
    n = args.tasks
    cmds0, c0, t0 = _commands(client), time.process_time(), time.perf_counter()
    for _ in range(n):
        task.delay()
    cpu, wall = time.process_time() - c0, time.perf_counter() - t0
    cmds = _delta(cmds0, _commands(client))
    print(f"enqueue, {name}, {n:,} tasks")
    print(f"  delay() CPU per call        {cpu / n * 1e6:8.1f} us  ({n / wall:,.0f}/s wall)")
    print(f"  Redis commands per delay()  {sum(cmds.values()) / n:8.2f}  (inside scripts too)")
    print(f"  script calls per delay()    {cmds.get('cmdstat_evalsha', 0) / n:8.2f}")
    bench.kernel.call(bench.broker.purge("default"))  # type: ignore[attr-defined]
    sigs = [task.s() for _ in range(n)]
    c0, t0 = time.process_time(), time.perf_counter()
    for k in range(0, n, 1000):
        bench.enqueue_many(sigs[k : k + 1000])
    cpu, wall = time.process_time() - c0, time.perf_counter() - t0
    print(f"  enqueue_many CPU per task   {cpu / n * 1e6:8.1f} us  ({n / wall:,.0f}/s wall)")
    bench.kernel.call(bench.broker.purge("default"))  # type: ignore[attr-defined]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--slots", type=int, default=16)
    parser.add_argument("--url", default="redis://127.0.0.1:6379/15")
    parser.add_argument("--prefix", default=f"taskflow-cpu-{os.getpid()}")
    parser.add_argument("--kind", choices=("sync", "async"), default="sync")
    parser.add_argument("--stored", action="store_true")
    parser.add_argument("--profile", default="")
    parser.add_argument("--skip-enqueue", action="store_true")
    args = parser.parse_args()
    url = f"{args.url}?prefix={args.prefix}"
    bench, tasks = build_app(url)
    task = tasks[f"cpu.{args.kind}" + ("" if args.stored else "_fire")]
    client = redis.Redis.from_url(args.url)
    try:
        bench.kernel.call(bench.kernel.connect())
        if not args.skip_enqueue:
            enqueue(bench, task, client, args)
        drain(bench, task, url, client, args)
    finally:
        drop_keys(client, f"*{args.prefix}*")
        bench.close()


if __name__ == "__main__":
    main()
