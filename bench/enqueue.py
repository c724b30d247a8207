"""Benchmark of sending on Redis: ``enqueue_many`` and the ``delay()`` loop, no worker.

Run from the project root (as a module, so ``import redis`` finds the library)::

    python -m bench.enqueue [--tasks 20000] [--rounds 7] [--url redis://127.0.0.1:6379/15]

``--tasks``   tasks per round and mode (default 20,000); ``enqueue_many`` sends them in
              calls of 1,000 signatures, as the shared peer harness does
``--rounds``  rounds per mode (default 7); the modes alternate within each round
``--url``     Redis server and database (default DB 15); keys live under the prefix
              ``taskflow-enqueue`` and are deleted after each round

Four modes: ``enqueue_many`` and the ``delay()`` loop, each for a task that stores its
result and one that does not (``store_result=False``, the peer harness's no-op task).
Printed per mode: the median and best rate of the rounds, the producer's CPU time per task
(this process, all threads) and the Redis server's time per task in the scripts it ran
(``INFO commandstats``: the publish and record scripts), medians of the rounds. Run it in
two checkouts one after the other (``cd`` into each) to compare them.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import redis

from bench._keys import drop_keys
from taskflow import App

URL = os.environ.get("BENCH_URL", "redis://127.0.0.1:6379/15?prefix=taskflow-enqueue")


def _script_usec(client: redis.Redis) -> float:
    stats = client.info("commandstats")
    scripts = ("cmdstat_evalsha", "cmdstat_eval")
    return float(sum(v["usec"] for k, v in stats.items() if k in scripts))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--url", default=URL)
    args = parser.parse_args()
    url = args.url if "prefix=" in args.url else f"{args.url}?prefix=taskflow-enqueue"
    prefix = url.split("prefix=", 1)[1].split("&", 1)[0]
    client = redis.Redis.from_url(url.split("?", 1)[0])
    tasks = args.tasks - args.tasks % 1000

    with App("bench-enqueue", broker=url) as app:

        @app.task(name="bench.stored")
        def stored() -> None: ...

        @app.task(name="bench.fire", store_result=False)
        def fire() -> None: ...

        def many(task: Callable[..., object]) -> Callable[[], None]:
            def run() -> None:
                for _ in range(0, tasks, 1000):
                    app.enqueue_many([task.s() for _ in range(1000)])  # type: ignore[attr-defined]

            return run

        def loop(task: Callable[..., object]) -> Callable[[], None]:
            def run() -> None:
                delay = task.delay  # type: ignore[attr-defined]
                for _ in range(tasks):
                    delay()

            return run

        modes = {
            "enqueue_many (no result)": many(fire),
            "enqueue_many (stored)": many(stored),
            "delay() loop (no result)": loop(fire),
            "delay() loop (stored)": loop(stored),
        }
        fire.delay()  # connect, load the scripts
        drop_keys(client, f"{{{prefix}}}:*", f"{prefix}:*")
        seen: dict[str, list[tuple[float, float, float]]] = {name: [] for name in modes}
        for _ in range(args.rounds):
            for name, run in modes.items():
                server = _script_usec(client)
                cpu = time.process_time()
                started = time.perf_counter()
                run()
                wall = time.perf_counter() - started
                cpu = time.process_time() - cpu
                server = _script_usec(client) - server
                seen[name].append((tasks / wall, cpu / tasks * 1e6, server / tasks))
                drop_keys(client, f"{{{prefix}}}:*", f"{prefix}:*")
    client.close()

    print(f"taskflow enqueue benchmark: {tasks:,} tasks x {args.rounds} rounds, {url}")
    print(f"{'mode':28}{'median/s':>10}{'best/s':>10}{'CPU µs/task':>13}{'Redis µs/task':>15}")
    for name, rows in seen.items():
        rates = [r for r, _, _ in rows]
        print(
            f"{name:28}{statistics.median(rates):10,.0f}{max(rates):10,.0f}"
            f"{statistics.median(c for _, c, _ in rows):13.1f}"
            f"{statistics.median(s for _, _, s in rows):15.1f}"
        )


if __name__ == "__main__":
    main()
