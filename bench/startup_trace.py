"""Where one worker start goes: the steps from starting the process to its first task done.

Run from the project root (as a module, so ``import redis`` finds the library)::

    python -m bench.startup_trace [--runs 7] [--queued 2000] [--options "-c 8"] [--async]
                                  [--url redis://127.0.0.1:6379/15]

Each run: the queue is filled with ``--queued`` tasks of ``bench._incr_app`` (each body
does one ``INCR``, as in the peer harness), then ``taskflow worker -A bench._incr_app:app``
with ``--options`` is started in a new Python process that first wraps the worker's steps
(the worker's code is not changed) and notes when each ends, on the clock this process
shares; this process notes the first body's ``INCR`` (the counter is read every half
millisecond), then stops the worker (SIGTERM). Printed, the median over the runs of each
step's end, in milliseconds from starting the process:

* ``python started``: the interpreter ran the first line of the wrapper;
* ``taskflow.cli.main imported``: what the ``taskflow`` command imports before it reads
  its arguments;
* ``app loaded``: the app's module imported (with the broker's client library) and the
  app built;
* ``event loop started``, ``connected``: the app's loop thread, then the broker and the
  result store connected (the first connection, the scripts registered, the server's
  eviction policy read);
* ``worker started``: its queues declared and its stages started;
* ``first fetch answered``: the first fetch that brought messages;
* ``first INCR``: the first body's ``INCR``, seen from this process.

With ``-P N`` the steps of every process count (the supervisor's and its workers'); a
step is the first process's to end it. ``--async`` gives the app ``async def`` bodies.
The wrapper's own module imports no more than ``os``, ``sys``, ``time`` and ``pathlib``
before its first step, which the ``taskflow`` command imports anyway.
Keys live under the prefix ``taskflow-startup-trace`` and are deleted at the end.
"""

from __future__ import annotations

# Only what the worker's own process needs at the top: it runs this module first.
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import redis

    from taskflow import App

ROOT = Path(__file__).resolve().parents[1]
STEPS = (
    "python started",
    "taskflow.cli.main imported",
    "app loaded",
    "event loop started",
    "connected",
    "worker started",
    "first fetch answered",
    "first INCR",
)
_MARK = "startup-trace:"


def _child(began: float, argv: list[str]) -> None:
    """In the worker's process: wrap the steps, then run the ``taskflow`` command."""

    def mark(step: str) -> None:
        ms = (time.time() - began) * 1000.0
        sys.stderr.write(f"{_MARK}{os.getpid()}:{step}:{ms:.3f}\n")
        sys.stderr.flush()

    mark("python started")
    import taskflow.cli.main as cli_main
    import taskflow.kernel.loop as loop_module
    import taskflow.worker.foreground as foreground
    from taskflow.worker.fetcher import Fetcher
    from taskflow.worker.worker import Worker

    mark("taskflow.cli.main imported")

    def after(owner: Any, name: str, step: str) -> None:
        inner = getattr(owner, name)

        def timed(*args: Any, **kwargs: Any) -> Any:
            value = inner(*args, **kwargs)
            mark(step)
            return value

        setattr(owner, name, timed)

    after(cli_main, "load", "app loaded")
    after(loop_module, "_new_loop", "event loop started")
    after(foreground, "connect", "connected")
    after(Worker, "start", "worker started")
    fetch = getattr(Fetcher, "_fetch")  # noqa: B009 (a private step, wrapped here)
    fetched = False

    async def first_fetch(self: Fetcher, credits: int, timeout: float) -> Any:
        nonlocal fetched
        got = await fetch(self, credits, timeout)
        if got and not fetched:
            fetched = True
            mark("first fetch answered")
        return got

    setattr(Fetcher, "_fetch", first_fetch)  # noqa: B010
    sys.argv[0] = "taskflow"
    cli_main.main(argv)


def trace_once(
    producer: App, client: redis.Redis, url: str, options: list[str], aio: bool, queued: int
) -> dict[str, float]:
    """One start: each step's end in ms from starting the process (its first process)."""
    import signal
    import subprocess

    from bench._incr_app import counter_key, fill
    from bench._keys import drop_keys
    from bench.startup import WORKER_ARGS, wait_first_incr, worker_env

    drop_keys(client, "*taskflow-startup-trace*")
    fill(producer, queued)
    began = time.time()
    wrapper = [sys.executable, "-m", "bench.startup_trace", "--child", repr(began)]
    proc = subprocess.Popen(
        [*wrapper, *WORKER_ARGS, *options],
        cwd=ROOT,
        env=worker_env(url, aio),
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_first_incr(proc, client, counter_key(url))
        seen = (time.time() - began) * 1000.0
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    ends: dict[str, float] = {"first INCR": seen}
    for line in err.splitlines():
        if line.startswith(_MARK):
            _pid, step, ms = line[len(_MARK) :].rsplit(":", 2)
            ends[step] = min(ends.get(step, float(ms)), float(ms))
    return ends


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        _child(float(sys.argv[2]), sys.argv[3:])
        return
    import argparse
    import shlex
    import statistics

    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--queued", type=int, default=2000)
    parser.add_argument("--options", default="-c 8")
    parser.add_argument("--async", dest="aio", action="store_true")
    parser.add_argument("--url", default="redis://127.0.0.1:6379/15")
    args = parser.parse_args()
    if args.runs < 1 or args.queued < 1:
        parser.error("--runs and --queued must be at least 1")
    url = f"{args.url}?prefix=taskflow-startup-trace"
    options = [*shlex.split(args.options), "--grace", "5"]
    body = "async def" if args.aio else "sync"
    print(f"worker start, step by step: {args.options} ({body} bodies), {args.runs} runs, ms")
    import redis

    from bench._incr_app import build_app
    from bench._keys import drop_keys

    client = redis.Redis.from_url(args.url)
    producer = build_app(url)  # one producer for every run
    runs = []
    try:
        for run in range(args.runs):
            runs.append(trace_once(producer, client, url, options, args.aio, args.queued))
            print(f"  run {run + 1} of {args.runs} done", file=sys.stderr, flush=True)
    finally:
        drop_keys(client, "*taskflow-startup-trace*")
        client.close()
        producer.close()
    print(f"{'step':30} {'median':>8} {'fastest':>8} {'slowest':>8}")
    for step in STEPS:
        values = [r[step] for r in runs if step in r]
        if values:
            print(
                f"{step:30} {statistics.median(values):8.1f} {min(values):8.1f} {max(values):8.1f}"
            )


if __name__ == "__main__":
    main()
