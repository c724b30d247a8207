"""Benchmark of the admin web service: the overview page at a large backlog, on SQLite.

Run from the project root::

    python -m bench.admin_web [--queues 50] [--dead 100000] [--repeats 30] [--db PATH]

``--queues``   queues, each holding an equal share of the dead letters
``--dead``     dead letters in all (with their ``failed`` records)
``--repeats``  timed loads of the overview page
``--db``       the SQLite file (default: a new one in a temporary directory, removed after)

How the backlog is made: dead letters are filed by the broker's admin ``add_dead`` (what a
snapshot import uses) in batches of 2,000, and their ``failed`` records are written with
``ResultStore.create_many``. Bodies are real envelopes of the task ``bench.noop``.

Measured: the server time of ``GET /`` (the overview: queues with counts, stats, workers,
the throughput chart), read from the ``Server-Timing`` header the service adds to every
response, p50/p99 over the repeats, for a logged-in session. Target: under 300 ms.
"""

from __future__ import annotations

import argparse
import re
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from starlette.testclient import TestClient

from taskflow import App, codec
from taskflow.admin import TokenStore, create_app
from taskflow.brokers.base import BrokerAdmin, DeadLetter
from taskflow.message import Envelope

TOKEN = "bench-token"
TARGET_MS = 300.0


async def _fill(app: App, queues: int, dead: int) -> None:
    kernel = app.kernel
    await kernel.connect()
    broker = kernel.broker
    assert isinstance(broker, BrokerAdmin)
    now = time.time()
    per_queue = -(-dead // queues) if dead else 0
    record = {"status": "failed", "attempts": 1, "finished_at": now, "name": "bench.noop"}
    for q in range(queues):
        queue = f"bench-{q:02d}"
        await kernel.declare(queue)
        count = max(0, min(per_queue, dead - q * per_queue))
        for start in range(0, count, 2000):
            letters = []
            for _ in range(min(2000, count - start)):
                tid = uuid.uuid4().hex
                body = codec.encode_envelope(
                    Envelope(id=tid, task="bench.noop", queue=queue, created_at=now)
                )
                letters.append(DeadLetter(tid, queue, body, "failed", "ValueError: x", now, 1))
            await kernel.results.create_many(
                [(d.id, {**record, "queue": queue}) for d in letters], None
            )
            await broker.add_dead(letters)


def _server_ms(header: str) -> float:
    match = re.search(r"dur=([0-9.]+)", header)
    assert match is not None, header
    return float(match.group(1))


def _measure(app: App, repeats: int) -> list[float]:
    web = create_app(app, tokens=TokenStore([("bench", TOKEN, False)]))
    with TestClient(web) as client:
        form = client.get("/login").text
        csrf = re.search(r'name="csrf" value="([^"]+)"', form)
        assert csrf is not None
        client.post("/login", data={"token": TOKEN, "csrf": csrf.group(1)})
        client.get("/")  # warm up: connections, templates
        times = []
        for _ in range(repeats):
            response = client.get("/")
            assert response.status_code == 200, response.status_code
            times.append(_server_ms(response.headers["Server-Timing"]))
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--queues", type=int, default=50)
    parser.add_argument("--dead", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--db", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        db = args.db or Path(tmp) / "admin-web.db"
        app = App("bench-admin-web", broker=f"sqlite:///{db}")
        try:
            started = time.perf_counter()
            app.kernel.call(_fill(app, args.queues, args.dead))
            print(f"filled {args.queues} queues, {args.dead} dead letters "
                  f"in {time.perf_counter() - started:.1f}s")  # fmt: skip
            times = sorted(_measure(app, args.repeats))
        finally:
            app.close()
    p50 = statistics.median(times)
    p99 = times[min(len(times) - 1, round(0.99 * (len(times) - 1)))]
    verdict = "ok" if p99 < TARGET_MS else "over target"
    print(f"overview server time: p50 {p50:.1f} ms, p99 {p99:.1f} ms "
          f"(target < {TARGET_MS:.0f} ms: {verdict})")  # fmt: skip


if __name__ == "__main__":
    main()
