"""How fast ``app.admin.purge`` drops a queue and closes its tasks' records, on any broker.

Run from the project root (as a module)::

    python -m bench.purge [--url redis://127.0.0.1:6379/15] [--tasks 20000] [--rounds 3]

Each round enqueues ``--tasks`` tasks that store their results (``enqueue_many``, 1,000 at
a time, each with its ``queued`` record) in a fresh queue, then times one
``app.admin.purge`` of that queue and checks that it dropped them all and that every
record says ``cancelled``. Printed per round: the purge's time and its rate in tasks per
second. A Redis or NATS URL gets a fresh ``prefix`` per run, deleted at the end; a SQLite
URL names a file (deleted first and at the end). ``bench.admin --purge`` times a purge
of a much larger Redis queue beside the other operator actions.
"""

from __future__ import annotations

import argparse
import os
import time
import uuid
from pathlib import Path

from bench._keys import drop_prefix
from taskflow import App, TaskStatus


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="redis://127.0.0.1:6379/15")
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    url = args.url
    prefix = f"tfbenchpurge{uuid.uuid4().hex[:6]}"
    if url.startswith(("redis", "nats")):
        url += ("&" if "?" in url else "?") + f"prefix={prefix}"
    sqlite_file = Path(url.split("///", 1)[1]) if url.startswith("sqlite:///") else None
    if sqlite_file is not None and sqlite_file.exists():
        os.remove(sqlite_file)
    app = App("bench-purge", broker=url, result_ttl=3600.0)

    @app.task(name="bench.purge.noop")
    def noop(i: int) -> int:
        return i

    try:
        print(f"purge of {args.tasks:,} tasks with their records, {args.url}")
        for round_no in range(1, args.rounds + 1):
            queue = f"purge-{round_no}"
            ids: list[str] = []
            for start in range(0, args.tasks, 1000):
                count = min(1000, args.tasks - start)
                sigs = [noop.s(i).set(queue=queue) for i in range(count)]
                ids += [r.id for r in app.enqueue_many(sigs)]
            began = time.perf_counter()
            purged = app.admin.purge(queue)
            took = time.perf_counter() - began
            if purged != args.tasks:
                raise SystemExit(f"purged {purged:,} of {args.tasks:,}")
            statuses = {app.result(tid).status for tid in ids[:: max(1, len(ids) // 200)]}
            if statuses != {TaskStatus.CANCELLED}:
                raise SystemExit(f"records left as {sorted(s.value for s in statuses)}")
            print(f"round {round_no}: {took:.2f} s = {purged / took:,.0f} tasks/s")
    finally:
        app.close()
        drop_prefix(args.url, prefix)
        if sqlite_file is not None:
            for suffix in ("", "-wal", "-shm"):
                Path(f"{sqlite_file}{suffix}").unlink(missing_ok=True)


if __name__ == "__main__":
    main()
