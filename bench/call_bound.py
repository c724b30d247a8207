"""What a bound on a Redis script call costs: ``Connection.run`` against ``Connection.ask``
(the same call within ``CALL_TIMEOUT``), one record update at a time, as a worker with a
result store of its own writes a record.

    python -m bench.call_bound [--url redis://127.0.0.1:6379/15] [--calls 5000] [--rounds 6]

The two take turns, each round in the other order; printed: the CPU time and the wall time
of a call for each, per round and the median. Keys live under a fresh prefix and are
deleted at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid

import redis

from bench._keys import drop_keys
from taskflow.results.redis import RedisResultStore


async def measure(url: str, calls: int, rounds: int) -> dict[str, list[tuple[float, float]]]:
    """Per round and per mode: (µs of CPU, µs of wall time) a call."""
    prefix = f"taskflow-bound{uuid.uuid4().hex[:6]}"
    store = RedisResultStore(f"{url}?prefix={prefix}")
    await store.connect()
    conn = store._conn  # noqa: SLF001 - the two ways in are what is compared
    try:
        await store.create_many([("t1", {"status": "queued"})], 60.0)
        args = [1, *store._update_args("t1", {"status": "running"}, None)]  # noqa: SLF001
        modes = {"run": conn.run, "ask": conn.ask}
        out: dict[str, list[tuple[float, float]]] = {name: [] for name in modes}
        for n in range(rounds):
            for name in list(modes) if n % 2 == 0 else list(modes)[::-1]:
                call = modes[name]
                cpu, wall = time.process_time(), time.perf_counter()
                for _ in range(calls):
                    await call("result_update", args)
                out[name].append(
                    (
                        (time.process_time() - cpu) / calls * 1e6,
                        (time.perf_counter() - wall) / calls * 1e6,
                    )
                )
        return out
    finally:
        await store.close()
        drop_keys(redis.Redis.from_url(url), f"{{{prefix}}}*")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="redis://127.0.0.1:6379/15")
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args()
    out = asyncio.run(measure(args.url, args.calls, args.rounds))
    print(f"{args.calls:,} record updates a round, {args.rounds} rounds, {args.url}")
    for name, rows in out.items():
        cpu = ", ".join(f"{c:.1f}" for c, _ in rows)
        print(
            f"{name}: CPU µs/call {cpu}; median {statistics.median(c for c, _ in rows):.1f}, "
            f"wall median {statistics.median(w for _, w in rows):.1f}"
        )


if __name__ == "__main__":
    main()
