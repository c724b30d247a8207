"""The Redis server's memory per queued task: what a backlog costs.

Run from the project root (as a module)::

    python -m bench.redis_memory [--tasks 100000] [--url redis://127.0.0.1:6379/15]
                                 [--listpack-value 64 1024]

``--tasks`` tasks of one small task (one integer argument) are queued with
``enqueue_many`` (1,000 at a time) by an app whose broker and result store are on the
server of ``--url``, once fire-and-forget (``store_result=False``) and once storing their
results (each then has a ``queued`` record, created with its message). Nothing consumes
them. Printed per case: the growth of the server's ``used_memory`` divided by the tasks,
``MEMORY USAGE`` of one message's hash and of one record, the encoding Redis chose for
them, and the rate of the ``enqueue_many`` calls.

A message's hash holds its encoded envelope (about 150 bytes for this task), longer than
the 64 bytes of a value Redis keeps in its compact listpack encoding by default
(``hash-max-listpack-value``), so the hash is a full hash table. ``--listpack-value N``
runs the cases once per value given, setting the server's ``hash-max-listpack-value``
for the run (``CONFIG SET``) and setting it back afterwards: use a server of your own,
as every hash written meanwhile, by any client, takes the setting. Hashes already
written keep their encoding.

Other clients' writes count in ``used_memory`` too: measure on a quiet server. Keys live
under the prefix ``taskflow-memory`` and are deleted after each case.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import redis

from bench._keys import drop_keys
from taskflow import App

PREFIX = "taskflow-memory"


def _case(url: str, tasks: int, stored: bool, client: redis.Redis) -> dict[str, Any]:
    base = url.split("?", 1)[0]
    app = App(
        "bench-memory",
        broker=f"{base}?prefix={PREFIX}",
        results=f"{base}?prefix={PREFIX}",
    )

    @app.task(name="bench.memory", store_result=stored)
    def work(x: int) -> int:
        return x

    try:
        app.enqueue_many([work.s(0)])  # connected, scripts loaded
        drop_keys(client, f"{{{PREFIX}}}:*")
        time.sleep(0.2)
        before = int(client.info("memory")["used_memory"])
        began = time.perf_counter()
        for start in range(0, tasks, 1000):
            app.enqueue_many([work.s(i) for i in range(start, min(tasks, start + 1000))])
        took = time.perf_counter() - began
        after = int(client.info("memory")["used_memory"])
        message = next(client.scan_iter(match=f"{{{PREFIX}}}:m:*", count=1000))
        records = list(client.scan_iter(match=f"{{{PREFIX}}}:r:*", count=1000))
        record = records[0] if records else None
        return {
            "per_task": (after - before) / tasks,
            "message": client.memory_usage(message),
            "message_encoding": client.object("encoding", message),
            "record": client.memory_usage(record) if record else None,
            "record_encoding": client.object("encoding", record) if record else None,
            "rate": tasks / took,
        }
    finally:
        app.close()
        drop_keys(client, f"{{{PREFIX}}}:*")


def _text(value: Any) -> str:
    if value is None:
        return "-"
    return value.decode() if isinstance(value, bytes) else str(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--url", default="redis://127.0.0.1:6379/15")
    parser.add_argument(
        "--listpack-value",
        type=int,
        nargs="*",
        default=[],
        help="run once per value of the server's hash-max-listpack-value (set back after)",
    )
    args = parser.parse_args()
    client = redis.Redis.from_url(args.url.split("?", 1)[0])
    original = client.config_get("hash-max-listpack-value")["hash-max-listpack-value"]
    settings: list[int | None] = list(args.listpack_value) or [None]
    print(
        f"Redis memory per queued task: {args.tasks:,} tasks queued with enqueue_many, "
        f"{args.url.split('?', 1)[0]}"
    )
    print(
        f"{'hash-max-listpack-value':>23}  {'case':<10} {'bytes/task':>10} "
        f"{'message':>8} {'encoding':<10} {'record':>7} {'encoding':<10} {'enqueue/s':>10}"
    )
    try:
        for setting in settings:
            if setting is not None:
                client.config_set("hash-max-listpack-value", str(setting))
            shown = original if setting is None else str(setting)
            for label, stored in (("no result", False), ("stored", True)):
                row = _case(args.url, args.tasks, stored, client)
                print(
                    f"{shown:>23}  {label:<10} {row['per_task']:>10,.0f} "
                    f"{row['message']:>8} {_text(row['message_encoding']):<10} "
                    f"{_text(row['record']):>7} {_text(row['record_encoding']):<10} "
                    f"{row['rate']:>10,.0f}"
                )
    finally:
        if args.listpack_value:
            client.config_set("hash-max-listpack-value", original)
        client.close()


if __name__ == "__main__":
    main()
