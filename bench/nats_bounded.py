"""``delay()`` to a bounded NATS queue with messages waiting: calls per second, latency
percentiles, and nats-server's CPU per call.

A send to a bounded queue first reads the work and delay streams' message counts; only when
those could reach the bound is the queue counted exactly (ten consumer infos, each a scan
of the stream on nats-server 2.9). The ``--waiting`` messages wait in another queue of the
same prefix, and the timed sends go to an empty one: ``--bound`` far above ``--waiting``
measures the first path, ``--bound`` equal to it the second (the streams then hold as many
messages as the bound, so every send counts its queue)::

    python -m bench.nats_bounded --waiting 20000 --calls 100
    python -m bench.nats_bounded --waiting 20000 --calls 100 --bound 20000

Uses a prefix of its own on ``--url``'s server and deletes its streams afterwards.
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid

from bench._keys import drop_prefix
from bench._procs import local_process, process_cpu
from taskflow import App


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="nats://127.0.0.1:4222")
    parser.add_argument("--waiting", type=int, default=20_000, help="messages queued first")
    parser.add_argument("--calls", type=int, default=100, help="delay() calls timed")
    parser.add_argument("--bound", type=int, default=1_000_000, help="the queue's max_queued")
    args = parser.parse_args()
    if args.bound < max(args.waiting, args.calls + 1):
        parser.error("--bound must leave room for --waiting, and for --calls in the timed queue")

    prefix = f"tfbound{uuid.uuid4().hex[:8]}"
    app = App("bench-bounded", broker=f"{args.url}?prefix={prefix}", max_queued=args.bound)

    @app.task(name="bench.bounded", store_result=False)
    def bounded() -> None:
        """Never runs: no worker consumes."""

    @app.task(name="bench.filler", queue="other", store_result=False)
    def filler() -> None:
        """Never runs: waits in the other queue."""

    server = local_process("nats-server")
    if server is None:
        raise SystemExit("no local nats-server process found: its CPU cannot be read")
    try:
        for start in range(0, args.waiting, 1000):
            app.enqueue_many([filler.s() for _ in range(min(1000, args.waiting - start))])
        bounded.delay()  # connected and warm
        latencies: list[float] = []
        cpu_before, began = process_cpu(server), time.perf_counter()
        for _ in range(args.calls):
            sent = time.perf_counter()
            bounded.delay()
            latencies.append(time.perf_counter() - sent)
        elapsed, cpu = time.perf_counter() - began, process_cpu(server) - cpu_before
    finally:
        app.close()
        drop_prefix(args.url, prefix)
    cuts = statistics.quantiles(latencies, n=100)
    print(
        f"delay() to an empty queue bounded at {args.bound:,}, {args.waiting:,} waiting "
        "in another, "
        f"{args.calls} calls"
    )
    print(
        f"{args.calls / elapsed:,.0f} calls/s; latency p50 {cuts[49] * 1000:.2f} ms, "
        f"p99 {cuts[98] * 1000:.2f} ms; nats-server CPU {cpu / args.calls * 1000:.2f} ms per call"
    )


if __name__ == "__main__":
    main()
