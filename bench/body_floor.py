"""The peer harness's task bodies with no task queue around them: the ceiling of a drain.

Run from the project root (as a module)::

    python -m bench.body_floor [--calls 40000] [--url redis://127.0.0.1:6379/15]
                               [--configs "sync 2x16" "sync 2x4" "async 2x64"]

Each configuration is ``KIND PxN``: ``P`` processes, each making its share of ``--calls``
calls of the body on ``N`` threads (``sync``: one ``INCR`` through redis-py's client, as
the harness's plain ``def`` body does) or ``N`` coroutines on one event loop (``async``:
one ``INCR`` awaited through redis-py's asyncio client, as its ``async def`` body does).
Nothing else runs: no messages, no acks, no worker. Printed: the rate of the calls, and
the CPU time per call of the processes and of the Redis server. A task queue running that
body in ``P`` processes with ``N`` slots each cannot drain faster than the rate printed
for ``PxN`` on the same machine, and what it spends per task beyond these CPU times is its
own. The counter lives at ``taskflow-floor:done`` and is deleted at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import threading
import time
from typing import Any

import redis
import redis.asyncio as aioredis

from bench._procs import server_cpu

KEY = "taskflow-floor:done"


def _sync_calls(url: str, threads: int, calls: int, out: Any) -> None:
    client = redis.Redis.from_url(url)
    client.incr(KEY)  # connected before the clock starts
    share = calls // threads

    def run() -> None:
        for _ in range(share):
            client.incr(KEY)

    workers = [threading.Thread(target=run) for _ in range(threads)]
    began, cpu = time.perf_counter(), time.process_time()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    out.put((time.perf_counter() - began, time.process_time() - cpu, share * threads))
    client.close()


def _async_calls(url: str, coroutines: int, calls: int, out: Any) -> None:
    async def main() -> None:
        client = aioredis.Redis.from_url(url)
        await client.incr(KEY)
        share = calls // coroutines

        async def run() -> None:
            for _ in range(share):
                await client.incr(KEY)

        began, cpu = time.perf_counter(), time.process_time()
        await asyncio.gather(*(run() for _ in range(coroutines)))
        out.put((time.perf_counter() - began, time.process_time() - cpu, share * coroutines))
        await client.aclose()

    asyncio.run(main())


def _parse(config: str) -> tuple[str, int, int]:
    kind, _, shape = config.partition(" ")
    processes, _, each = shape.partition("x")
    if kind not in ("sync", "async") or not processes.isdigit() or not each.isdigit():
        raise SystemExit(f"a configuration is 'sync PxN' or 'async PxN', not {config!r}")
    return kind, int(processes), int(each)


def floor(url: str, config: str, calls: int) -> tuple[float, float, float]:
    """Calls per second, CPU µs per call of the processes, and of the Redis server."""
    kind, processes, each = _parse(config)
    target = _sync_calls if kind == "sync" else _async_calls
    out: Any = multiprocessing.Queue()
    procs = [
        multiprocessing.Process(target=target, args=(url, each, calls // processes, out))
        for _ in range(processes)
    ]
    client = redis.Redis.from_url(url)
    server0 = server_cpu(client)
    for proc in procs:
        proc.start()
    results = [out.get(timeout=600) for _ in procs]
    for proc in procs:
        proc.join()
    server = server_cpu(client) - server0
    client.close()
    wall = max(r[0] for r in results)
    cpu = sum(r[1] for r in results)
    done = sum(r[2] for r in results)
    return done / wall, cpu / done * 1e6, server / done * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--calls", type=int, default=40_000)
    parser.add_argument("--url", default="redis://127.0.0.1:6379/15")
    parser.add_argument(
        "--configs", nargs="+", default=["sync 2x16", "sync 2x8", "sync 2x4", "async 2x64"]
    )
    args = parser.parse_args()
    print(f"the harness's bodies alone: {args.calls:,} calls per configuration, {args.url}")
    print(f"{'configuration':16}{'calls/s':>10}{'CPU µs/call':>14}{'Redis µs/call':>15}")
    client = redis.Redis.from_url(args.url)
    try:
        for config in args.configs:
            rate, cpu, server = floor(args.url, config, args.calls)
            print(f"{config:16}{rate:10,.0f}{cpu:14.1f}{server:15.1f}", flush=True)
    finally:
        client.delete(KEY)
        client.close()


if __name__ == "__main__":
    main()
