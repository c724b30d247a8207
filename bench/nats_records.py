"""What one task record operation costs on the NATS result store: rate, and CPU per call.

Run from the project root (as a module)::

    python -m bench.nats_records [--calls 5000] [--concurrency 8] [--rounds 3]
                                 [--url nats://127.0.0.1:4222]

A worker writes each stored task's record twice (``running``, then its outcome) through
the store's compare-and-set path, and reads it first when it did not write it last. This
times those calls alone, in this process, ``--concurrency`` at a time (a worker's slots):

* ``create``: a new record (what ``delay()`` writes);
* ``update (read + set)``: a record written elsewhere (the ``running`` write of a task);
* ``update (set only)``: a record this store wrote last (the outcome's write);
* ``get``: a read.

Printed per call, for each round: calls per second, this process's CPU (the client's:
taskflow's and nats-py's Python) and, when the server runs on this machine, nats-server's
CPU, in microseconds. The bucket (prefix ``taskflow-records``) is deleted at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable

from bench._keys import drop_prefix
from bench._procs import local_process, process_cpu
from taskflow.results.nats import NatsResultStore

PREFIX = "taskflow-records"


async def _timed(
    label: str,
    calls: int,
    concurrency: int,
    server: int | None,
    call: Callable[[int], Awaitable[object]],
) -> None:
    gate = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        async with gate:
            await call(i)

    server0 = 0.0 if server is None else process_cpu(server)
    client0, began = time.process_time(), time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(calls)))
    elapsed = time.perf_counter() - began
    client = (time.process_time() - client0) / calls * 1e6
    line = f"  {label:24}{calls / elapsed:10,.0f}/s{client:11.1f}"
    if server is not None:
        line += f"{(process_cpu(server) - server0) / calls * 1e6:11.1f}"
    print(line, flush=True)


def _calls(
    producer: NatsResultStore, store: NatsResultStore, ids: list[str]
) -> list[tuple[str, Callable[[int], Awaitable[object]]]]:
    """The timed calls, in order, on the records ``ids``."""
    queued = {"status": "queued", "name": "bench.noop", "queue": "default"}
    running = {"status": "running", "started_at": time.time(), "worker": "w1"}
    done = {"status": "succeeded", "finished_at": time.time(), "result": None}

    async def create(i: int) -> object:
        return await producer.create_many([(ids[i], queued)], None)

    async def read_and_set(i: int) -> object:
        return await store.update(ids[i], running, None)

    async def set_only(i: int) -> object:
        return await store.update(ids[i], done, None)

    async def read(i: int) -> object:
        return await store.get(ids[i])

    return [
        ("create", create),
        ("update (read + set)", read_and_set),
        ("update (set only)", set_only),
        ("get", read),
    ]


async def run(url: str, calls: int, concurrency: int, rounds: int) -> None:
    # Two stores, as a producer's and a worker's: the worker's did not write the queued
    # records, so its first update of each reads it; the next is its own write's.
    producer = NatsResultStore(url, prefix=PREFIX, sweep_interval=None)
    store = NatsResultStore(url, prefix=PREFIX, sweep_interval=None)
    await producer.connect()
    await store.connect()
    server = local_process("nats-server")
    try:
        for n in range(1, rounds + 1):
            print(f"round {n}: {'call':24}{'rate':>12}{'client µs':>11}"
                  + (f"{'server µs':>11}" if server is not None else ""))  # fmt: skip
            ids = [f"r{n}-{i}" for i in range(calls)]
            for label, call in _calls(producer, store, ids):
                await _timed(label, calls, concurrency, server, call)
    finally:
        await store.close()
        await producer.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--url", default="nats://127.0.0.1:4222")
    args = parser.parse_args()
    try:
        asyncio.run(run(args.url, args.calls, args.concurrency, args.rounds))
    finally:
        drop_prefix(f"{args.url}?prefix={PREFIX}", PREFIX)


if __name__ == "__main__":
    main()
