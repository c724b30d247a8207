"""Benchmark of the operations API (``app.admin``) on Redis, at a large backlog.

Run from the project root (as a module, so ``import redis`` finds the library)::

    python -m bench.admin [--ready 1000000] [--dead 100000] [--replay 10000]
                          [--dead-queues 1] [--repeats 50] [--purge 0]
                          [--url redis://127.0.0.1:6379/15] [--prefix taskflow-bench-admin]

``--ready``        ready messages in the queue ``bench-ready``
``--dead``         dead letters: of the ready queue itself (one queue with both, by
                   default), or spread evenly over ``--dead-queues`` other queues
``--replay``       dead letters replayed in the timed replay
``--repeats``      timed calls of ``queues()`` and ``dead_letters(limit=100)``
``--purge``        then purge a queue of this many waiting tasks with their ``queued``
                   records (``bench-purge``, filled like the ready queue, the records by
                   ``ResultStore.create_many``); timed, in tasks per second
``--cli-repeats``  timed runs of ``taskflow queues`` and ``taskflow dlq list --limit 100``
                   as new processes (on the backlog, and on an empty prefix for the
                   start-up alone)
``--url``          Redis server and database (DB 15 by default, never the app data in DB 0);
                   every key lives under ``--prefix`` and is deleted at the end

How the backlog is made (fast, and through the broker's own code): ready messages go
through ``RedisBroker.publish`` (the ``publish.lua`` script) in batches of 5,000, several
batches in flight; dead letters are filed by the broker's admin ``add_dead`` (the
``bury`` action of ``admin.lua``) in batches of 2,000, and their ``failed`` records are
written with ``ResultStore.create_many`` (one script per batch). Bodies are real envelopes
of the no-op task ``bench.noop``.

Measured: ``adm.queues()`` and ``adm.dead_letters(limit=100)`` (p50/p99 over the repeats;
target under 200 ms each) and one ``adm.replay(limit=--replay)`` (rate in dead letters per
second; target at least 5,000/s).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

from bench._keys import drop_prefix
from taskflow import App, codec
from taskflow.brokers.base import BrokerAdmin, DeadLetter, Message
from taskflow.message import Envelope

READY_QUEUE = "bench-ready"
PURGE_QUEUE = "bench-purge"


def _body(queue: str, task_id: str, now: float) -> bytes:
    return codec.encode_envelope(
        Envelope(id=task_id, task="bench.noop", queue=queue, created_at=now)
    )


async def _fill_purge(app: App, count: int) -> None:
    """``count`` waiting tasks of ``PURGE_QUEUE``, each with its ``queued`` record."""
    kernel = app.kernel
    await kernel.connect()
    broker = kernel.broker
    await kernel.declare(PURGE_QUEUE)
    now = time.time()
    record = {"status": "queued", "attempts": 0, "name": "bench.noop", "queue": PURGE_QUEUE}
    for start in range(0, count, 5000):
        batch = []
        for _ in range(min(5000, count - start)):
            tid = uuid.uuid4().hex
            batch.append(Message(tid, PURGE_QUEUE, _body(PURGE_QUEUE, tid, now)))
        await kernel.results.create_many([(m.id, record) for m in batch], None)
        await broker.publish(batch)  # type: ignore[attr-defined]


async def _fill(app: App, ready: int, dead: int, dead_queues: int) -> None:
    kernel = app.kernel
    await kernel.connect()
    broker = kernel.broker
    assert isinstance(broker, BrokerAdmin)
    now = time.time()
    await kernel.declare(READY_QUEUE)
    batches = []
    for start in range(0, ready, 5000):
        batch = []
        for _ in range(min(5000, ready - start)):
            tid = uuid.uuid4().hex
            batch.append(Message(tid, READY_QUEUE, _body(READY_QUEUE, tid, now)))
        batches.append(batch)
    for start in range(0, len(batches), 4):
        await asyncio.gather(*(broker.publish(b) for b in batches[start : start + 4]))  # type: ignore[attr-defined]
    per_queue = -(-dead // dead_queues) if dead else 0
    record = {"status": "failed", "attempts": 1, "finished_at": now, "name": "bench.noop"}
    for q in range(dead_queues):
        queue = READY_QUEUE if dead_queues == 1 else f"bench-dead-{q}"
        await kernel.declare(queue)
        count = min(per_queue, dead - q * per_queue)
        for start in range(0, max(0, count), 2000):
            letters = []
            for _ in range(min(2000, count - start)):
                tid = uuid.uuid4().hex
                body = _body(queue, tid, now)
                letters.append(DeadLetter(tid, queue, body, "failed", "ValueError: x", now, 1))
            records = [(d.id, {**record, "queue": queue}) for d in letters]
            await kernel.results.create_many(records, None)
            await broker.add_dead(letters)


def _timed(call: Callable[[], Any], repeats: int) -> tuple[float, float]:
    call()  # warm up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    times.sort()
    p99 = times[min(len(times) - 1, round(0.99 * (len(times) - 1)))]
    return statistics.median(times), p99


def _command_wall(
    argv: list[str], url: str, repeats: int, ok_codes: tuple[int, ...] = (0,)
) -> float:
    """Median wall time of ``taskflow ARGV -A bench.admin_cli_app --json`` as a new process
    (Python start-up, imports and connecting included)."""
    command = [sys.executable, "-m", "taskflow.cli.main", *argv, "-A", "bench.admin_cli_app"]
    env = {**os.environ, "TASKFLOW_BROKER_URL": url}
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        done = subprocess.run([*command, "--json"], env=env, capture_output=True, check=False)
        times.append(time.perf_counter() - start)
        if done.returncode not in ok_codes:
            raise SystemExit(f"{' '.join(argv)} failed: {done.stderr.decode()[-500:]}")
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ready", type=int, default=1_000_000)
    parser.add_argument("--dead", type=int, default=100_000)
    parser.add_argument("--replay", type=int, default=10_000)
    parser.add_argument("--dead-queues", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--cli-repeats", type=int, default=5)
    parser.add_argument("--purge", type=int, default=0)
    parser.add_argument("--url", default="redis://127.0.0.1:6379/15")
    parser.add_argument("--prefix", default="taskflow-bench-admin")
    args = parser.parse_args()

    prefix = f"{args.prefix}-{uuid.uuid4().hex[:6]}"
    app = App("bench-admin", broker=f"{args.url}?prefix={prefix}", result_ttl=None)
    try:
        start = time.perf_counter()
        app.kernel.call(_fill(app, args.ready, args.dead, args.dead_queues))
        fill = time.perf_counter() - start
        print(f"filled {args.ready:,} ready and {args.dead:,} dead in {fill:.1f} s")
        adm = app.admin
        p50, p99 = _timed(adm.queues, args.repeats)
        print(f"queues():                 p50 {p50 * 1e3:7.1f} ms  p99 {p99 * 1e3:7.1f} ms")
        p50, p99 = _timed(lambda: adm.dead_letters(limit=100), args.repeats)
        print(f"dead_letters(limit=100):  p50 {p50 * 1e3:7.1f} ms  p99 {p99 * 1e3:7.1f} ms")
        backlog = f"{args.url}?prefix={prefix}"
        empty = f"{args.url}?prefix={prefix}-empty"
        for argv in (["queues"], ["dlq", "list", "-Q", READY_QUEUE, "--limit", "100"]):
            full = _command_wall(argv, backlog, args.cli_repeats)
            bare = _command_wall(argv, empty, args.cli_repeats, ok_codes=(0, 1))
            print(
                f"taskflow {' '.join(argv)} --json (a new process): p50 {full * 1e3:6.0f} ms;"
                f" the same on an empty prefix {bare * 1e3:6.0f} ms"
            )
        start = time.perf_counter()
        report = adm.replay(limit=args.replay)
        took = time.perf_counter() - start
        rate = report.replayed / took if took else 0.0
        print(f"replay({args.replay:,}):  {report.replayed:,} in {took:.2f} s = {rate:,.0f}/s")
        if args.purge:
            app.kernel.call(_fill_purge(app, args.purge))
            start = time.perf_counter()
            purged = adm.purge(PURGE_QUEUE)
            took = time.perf_counter() - start
            print(
                f"purge({args.purge:,} with records):  {purged:,} in {took:.2f} s"
                f" = {purged / took:,.0f}/s"
            )
    finally:
        app.close()
        drop_prefix(args.url, prefix)


if __name__ == "__main__":
    main()
