"""Redis and NATS side by side, in one run: the same workload and figures for both.

Run from the project root::

    python -m bench.backends [--tasks 20000] [--samples 200] [--slots 8]
        [--redis redis://127.0.0.1:6379/15] [--nats nats://127.0.0.1:4222]

Runs ``bench.redis_backend`` and then ``bench.nats_backend`` (each under its own prefix,
deleted at the end) and prints one table: enqueue rates (``delay()`` loop and
``enqueue_many``), drain rates with 1 and 2 worker processes, with and without stored
results, and pickup latency p50/p99 on an idle warm worker.
"""

from __future__ import annotations

import argparse

from bench import nats_backend, redis_backend


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--slots", type=int, default=8)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/15")
    parser.add_argument("--nats", default="nats://127.0.0.1:4222")
    args = parser.parse_args()
    results = {
        "redis": dict(
            redis_backend.run(args.tasks, args.redis, "tf-bench-r", args.samples, args.slots)
        ),
        "nats": dict(
            nats_backend.run(args.tasks, args.nats, "tf-bench-n", args.samples, args.slots)
        ),
    }
    labels: list[str] = []
    for rows in results.values():
        labels += [label for label in rows if label not in labels]
    width = max(len(label) for label in labels)
    print(f"taskflow backends: {args.tasks:,} no-op tasks, {args.slots} slots per process")
    cell = max(22, *(len(v) for rows in results.values() for v in rows.values()))
    print(f"  {'':<{width}}  {'redis':>{cell}}  {'nats':>{cell}}")
    for label in labels:
        cells = [results[name].get(label, "-") for name in ("redis", "nats")]
        print(f"  {label:<{width}}  {cells[0]:>{cell}}  {cells[1]:>{cell}}")


if __name__ == "__main__":
    main()
