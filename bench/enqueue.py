"""Benchmark of sending on Redis: ``enqueue_many`` and the ``delay()`` loop, no worker.

Run from the project root (as a module, so ``import redis`` finds the library)::

    python -m bench.enqueue [--tasks 20000] [--rounds 7] [--url redis://127.0.0.1:6379/15]
                            [--phases]

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

``--phases`` prints instead where ``enqueue_many``'s time goes, for calls of 1,000
fire-and-forget signatures: the producer's CPU time per task in each step of the call
(making the signatures; checking them and encoding their arguments into envelopes; the
plan, which runs the enqueue middleware; the send, which encodes the envelopes, packs the
publish script's call and reads its reply; the result handles), the send's wall-clock
time (its CPU time and the wait for Redis's reply), and the Redis server's time in the
publish script. Medians over ``--rounds`` rounds of ``--tasks`` tasks.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import redis

from bench._keys import drop_keys
from taskflow import App
from taskflow.canvas.signature import prepare_signatures
from taskflow.results.handle import AsyncResult

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
    parser.add_argument("--phases", action="store_true", help="where enqueue_many's time goes")
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

        fire.delay()  # connect, load the scripts
        drop_keys(client, f"{{{prefix}}}:*", f"{prefix}:*")
        modes = {
            "enqueue_many (no result)": many(fire),
            "enqueue_many (stored)": many(stored),
            "delay() loop (no result)": loop(fire),
            "delay() loop (stored)": loop(stored),
        }
        seen: dict[str, list[tuple[float, float, float]]] = {name: [] for name in modes}
        timed: list[dict[str, float]] = []
        for _ in range(args.rounds):
            if args.phases:
                timed.append(phases(app, fire, tasks, client))
                drop_keys(client, f"{{{prefix}}}:*", f"{prefix}:*")
                continue
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

    if args.phases:
        print(f"enqueue_many of fire-and-forget tasks, {tasks:,} tasks x {args.rounds}")
        print(f"rounds in calls of 1,000, {url}; medians, µs per task")
        for step in timed[0]:
            print(f"  {step:40}{statistics.median(r[step] for r in timed):8.1f}")
        return
    print(f"taskflow enqueue benchmark: {tasks:,} tasks x {args.rounds} rounds, {url}")
    print(f"{'mode':28}{'median/s':>10}{'best/s':>10}{'CPU µs/task':>13}{'Redis µs/task':>15}")
    for name, rows in seen.items():
        rates = [r for r, _, _ in rows]
        print(
            f"{name:28}{statistics.median(rates):10,.0f}{max(rates):10,.0f}"
            f"{statistics.median(c for _, c, _ in rows):13.1f}"
            f"{statistics.median(s for _, _, s in rows):15.1f}"
        )


def phases(app: App, task: Any, tasks: int, client: redis.Redis) -> dict[str, float]:
    """One round of ``enqueue_many`` calls of 1,000 signatures, each step timed as
    ``App.enqueue_many`` takes it (the steps of ``send_signatures``, one by one): µs per
    task."""
    kernel = app.kernel
    steps = ("signatures", "checks and envelopes", "plan", "send", "result handles")
    cpu = dict.fromkeys(steps, 0.0)
    send_wall = 0.0
    server = _script_usec(client)
    clock = time.process_time
    for _ in range(0, tasks, 1000):
        t0 = clock()
        signatures = [task.s() for _ in range(1000)]
        t1 = clock()
        prepared = prepare_signatures(kernel, signatures)
        t2 = clock()
        plan = kernel.enqueuer.plan(prepared)
        t3 = clock()
        wall = time.perf_counter()
        ids = kernel.enqueuer.run_blocking(plan)
        send_wall += time.perf_counter() - wall
        t4 = clock()
        pairs = zip(ids, prepared, strict=True)
        handles: list[AsyncResult[Any]] = [
            AsyncResult(kernel, i, p.envelope.task) for i, p in pairs
        ]
        t5 = clock()
        assert len(handles) == 1000
        for step, spent in zip(cpu, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4), strict=True):
            cpu[step] += spent
    server = _script_usec(client) - server
    out = {f"CPU: {step}": spent / tasks * 1e6 for step, spent in cpu.items()}
    out["CPU: the whole call"] = sum(cpu.values()) / tasks * 1e6
    out["the send, wall-clock"] = send_wall / tasks * 1e6
    out["Redis: the publish script"] = server / tasks
    return out


if __name__ == "__main__":
    main()
