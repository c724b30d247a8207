"""Worker start-up: from starting ``taskflow worker`` to its first task done, and the imports.

Run from the project root (as a module, so ``import redis`` finds the library)::

    python -m bench.startup [--runs 9] [--queued 2000] [--url redis://127.0.0.1:6379/15]
                            [--configs "-c 8" "-P 2 -c 16" "async -P 2 -c 64"]
                            [--import-runs 15]

``--configs``  ``taskflow worker`` options, one series each; a leading ``async`` gives the
               series ``async def`` bodies (awaiting their ``INCR`` through redis-py's
               asyncio client), else plain ``def`` bodies on the worker's threads. The
               default: the peer harness's four configurations
``--queued``   tasks waiting before each start (each body does one ``INCR`` on Redis, as
               in the peer harness)
``--runs``     starts per configuration; the configurations take turns, so that a change
               of the machine's load meets all of them
``--import-runs``  runs of each import measurement (0: none)

Each start: the queue is emptied and filled again, then the worker command (the
``taskflow`` console script beside this Python, as users start it, with the app of
``bench._incr_app``, which imports no more than a small app would) is started and the
clock runs until the first body's ``INCR`` is seen (the counter is read every half
millisecond), as the peer harness's drain counts its start-up. The worker is then stopped
(SIGTERM). Printed per configuration: the median, the fastest and the slowest start.

Then, what the imports cost (each a new Python process, the median of ``--import-runs``):
``python -c pass``, ``import redis.asyncio`` (which every worker on Redis needs, and
most peers import too), and that with ``import taskflow.cli.main`` (what the worker
command imports before it loads the app): the last minus the second is taskflow's own
share of a start. Keys live under the prefix ``taskflow-startup`` and are deleted at the
end.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import redis

from bench._incr_app import build_app, counter_key, fill
from bench._keys import drop_keys
from taskflow import App

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ["-c 8", "-P 2 -c 16", "async -c 8", "async -P 2 -c 64"]


WORKER_ARGS = ("worker", "-A", "bench._incr_app:app", "--loglevel", "warning")
"""``taskflow worker``'s arguments before the options, for the app of ``bench._incr_app``."""


def _command(options: list[str]) -> list[str]:
    script = Path(sys.executable).with_name("taskflow")
    head = [str(script)] if script.exists() else [sys.executable, "-m", "taskflow.cli.main"]
    return [*head, *WORKER_ARGS, *options]


def worker_env(url: str, aio: bool) -> dict[str, str]:
    """The environment of a worker of ``bench._incr_app`` on ``url``."""
    return {
        **os.environ,
        "BENCH_URL": url,
        "BENCH_ASYNC": "1" if aio else "0",
        "PYTHONPATH": str(ROOT),
    }


def wait_first_incr(
    proc: subprocess.Popen[Any], client: redis.Redis, counter: str, what: str = "the worker"
) -> None:
    """Return once a body of the worker ``proc`` (``what``, in errors) has counted on
    ``counter`` (read every half millisecond); SystemExit if it exits first or runs
    nothing within 60 s."""
    deadline = time.monotonic() + 60
    while not client.get(counter):
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited with status {proc.returncode}")
        if time.monotonic() > deadline:
            raise SystemExit(f"{what} did not run a task within 60 s")
        time.sleep(0.0005)


def start_once(producer: App, url: str, config: str, queued: int, client: redis.Redis) -> float:
    """Seconds from starting the worker on ``url`` (``producer``'s) to its first body's
    ``INCR``."""
    words = shlex.split(config)
    aio = bool(words) and words[0] == "async"
    options = words[1:] if aio else words
    drop_keys(client, "*taskflow-startup*")
    fill(producer, queued)
    env = worker_env(url, aio)
    started = time.perf_counter()
    proc = subprocess.Popen(_command([*options, "--grace", "5"]), cwd=ROOT, env=env)
    try:
        wait_first_incr(proc, client, counter_key(url), f"the worker ({config})")
        return time.perf_counter() - started
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)


def import_time(code: str, runs: int) -> float:
    """Median seconds of ``python -c code`` in a new process."""
    times = []
    for _ in range(runs):
        began = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
        times.append(time.perf_counter() - began)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--queued", type=int, default=2000)
    parser.add_argument("--url", default="redis://127.0.0.1:6379/15")
    parser.add_argument("--configs", nargs="+", default=CONFIGS)
    parser.add_argument("--import-runs", type=int, default=15)
    args = parser.parse_args()
    if args.runs < 1 or args.queued < 1 or args.import_runs < 0:
        parser.error("--runs and --queued must be at least 1, --import-runs at least 0")
    # One producer for every start; what its task runs does not matter to it (the worker
    # builds the app again, with sync or async def bodies as the configuration says).
    url = f"{args.url}?prefix=taskflow-startup"
    producer = build_app(url)
    client = redis.Redis.from_url(args.url)
    print(f"taskflow worker start-up: {args.queued:,} tasks waiting, {args.url}", flush=True)
    seconds: dict[str, list[float]] = {config: [] for config in args.configs}
    try:
        for run in range(args.runs):
            for config in args.configs:
                seconds[config].append(start_once(producer, url, config, args.queued, client))
            print(f"  run {run + 1} of {args.runs} done", file=sys.stderr, flush=True)
    finally:
        drop_keys(client, "*taskflow-startup*")
        client.close()
        producer.close()
    print(f"{'worker options':32} {'median s':>9} {'fastest':>8} {'slowest':>8}")
    for config, values in seconds.items():
        print(f"{config:32} {statistics.median(values):9.3f} {min(values):8.3f} {max(values):8.3f}")
    if args.import_runs:
        print(f"imports, median of {args.import_runs} new processes:")
        base = import_time("pass", args.import_runs)
        with_redis = import_time("import redis.asyncio", args.import_runs)
        full = import_time("import redis.asyncio, taskflow.cli.main", args.import_runs)
        rows = [
            ("python -c pass", base),
            ("import redis.asyncio", with_redis),
            ("import redis.asyncio, taskflow.cli.main", full),
            ("taskflow's own share (the last minus the one before)", full - with_redis),
        ]
        for what, value in rows:
            print(f"  {what:54} {value * 1e3:7.1f} ms")


if __name__ == "__main__":
    main()
