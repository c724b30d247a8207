"""Where the Redis server's time goes in the fetch, settle and record scripts, per message.

Run from the project root (as a module)::

    python -m bench.script_cost [--messages 20000] [--batches 1 10 24] [--rounds 3]
                                [--url redis://127.0.0.1:6379/13]

For each batch size, ``--messages`` fire-and-forget messages of ``bench._incr_app``'s task
are published (``fill``: ``enqueue_many``, 1,000 at a time), taken by the broker's own
``fetch`` that many at a time, then acked that many at a time (the acks of one batch go
out in one settle call, as a worker's do). Then as many ``queued`` task records are
written and, timed (``record``), given their outcome that many at a time through the
result store's ``update_many`` (``result_update.lua``, whose merge the settle of a task
that stores its result runs too).
No worker runs and nothing else should use the server: the figures are the server's.
Printed per step and batch size, per message, medians of the rounds:

* ``calls``: script calls per message;
* ``server``: the server's CPU time (``INFO cpu``, user and system), which counts reading
  the calls and writing the replies too;
* ``script``: the script calls' own time (``INFO commandstats``, ``EVALSHA``);
* ``commands``: the time of the commands the scripts ran, counted apart by Redis as well;
* ``rest``: ``script`` less ``commands``, the script itself: its Lua, turning its
  arguments and the commands' replies into Lua values and its reply back.

Then the same per call for fixed costs: the fetch script finding nothing ready in a queue
of its own (what a fetch pays before its first message); the fetch script's definitions
alone (its text up to its first step: the helper functions and constants a script's text
defines again on every call); a script that only returns (what any script call pays).

Keys live under the prefix ``taskflow-scripts`` and are deleted after every round.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import redis

from bench._incr_app import build_app, fill
from bench._keys import drop_keys
from bench._procs import server_cpu
from taskflow import App
from taskflow._redis.scripts import load_script
from taskflow.brokers.base import Delivery

PREFIX = "taskflow-scripts"
# Where fetch.lua's main part begins, after its helpers (see "its definitions" below).
_FIRST_STEP = "local out = {}"


@dataclass(frozen=True)
class Cost:
    """Per message: script calls, and the server's time in µs (see the module's doc)."""

    calls: float
    server: float
    script: float
    commands: float

    @property
    def rest(self) -> float:
        return self.script - self.commands


class Meter:
    """The server's counters before a step; :meth:`cost` gives the step's, per message."""

    def __init__(self, client: redis.Redis) -> None:
        self._client = client
        self._before = self._read()

    def _read(self) -> tuple[float, int, int, int]:
        used = server_cpu(self._client)
        stats = self._client.info("commandstats")
        script = stats.get("cmdstat_evalsha", {"calls": 0, "usec": 0})
        commands = sum(
            int(v["usec"]) for k, v in stats.items() if k not in ("cmdstat_evalsha", "cmdstat_info")
        )
        return used, int(script["calls"]), int(script["usec"]), commands

    def cost(self, messages: int) -> Cost:
        after = self._read()
        used, calls, script, commands = (a - b for a, b in zip(after, self._before, strict=True))
        return Cost(calls / messages, used * 1e6 / messages, script / messages, commands / messages)


async def _fetch_all(app: App, messages: int, batch: int) -> list[Delivery]:
    got: list[Delivery] = []
    while len(got) < messages:
        taken = await app.broker.fetch(["default"], batch, 0)
        if not taken:
            raise SystemExit(f"fetched {len(got):,} of {messages:,} messages: the rest is gone")
        got.extend(taken)
    return got


async def _ack_all(deliveries: list[Delivery], batch: int) -> None:
    for start in range(0, len(deliveries), batch):
        acked = await asyncio.gather(*(d.ack() for d in deliveries[start : start + batch]))
        if not all(acked):
            raise SystemExit("an ack did not hold: is a worker consuming this queue?")


async def _finish_records(app: App, ids: list[str], batch: int) -> None:
    results = app.kernel.results
    done = {"status": "succeeded", "result": 1, "finished_at": time.time()}
    for start in range(0, len(ids), batch):
        await results.update_many([(i, done) for i in ids[start : start + batch]], 3600.0)


def one_round(app: App, client: redis.Redis, messages: int, batch: int) -> list[Cost]:
    """Publish, fetch and ack ``messages`` messages ``batch`` at a time, then write the
    outcome of as many queued records: the fetch's, the settle's and the record
    updates' costs."""
    fill(app, messages)
    ids = [uuid.uuid4().hex for _ in range(messages)]
    queued = {"status": "queued", "attempts": 0, "name": "bench.noop"}
    try:
        meter = Meter(client)
        deliveries = app.kernel.call(_fetch_all(app, messages, batch))
        fetch = meter.cost(messages)
        meter = Meter(client)
        app.kernel.call(_ack_all(deliveries, batch))
        settle = meter.cost(messages)
        app.kernel.call(app.kernel.results.create_many([(i, queued) for i in ids], 3600.0))
        meter = Meter(client)
        app.kernel.call(_finish_records(app, ids, batch))
        record = meter.cost(messages)
    finally:
        drop_keys(client, f"*{PREFIX}*")
    return [fetch, settle, record]


def median(costs: list[Cost]) -> Cost:
    """Each field's median over ``costs``."""
    return Cost(
        statistics.median(c.calls for c in costs),
        statistics.median(c.server for c in costs),
        statistics.median(c.script for c in costs),
        statistics.median(c.commands for c in costs),
    )


def per_call(
    client: redis.Redis, label: str, call: Callable[[], None], calls: int, rounds: int
) -> None:
    """Print the median cost of one ``call()`` over ``rounds`` rounds of ``calls``."""
    costs = []
    for _ in range(rounds):
        meter = Meter(client)
        for _ in range(calls):
            call()
        costs.append(meter.cost(calls))
    m = median(costs)
    print(f"{label:16}{m.server:9.2f}{m.script:9.2f}{m.commands:10.2f}{m.rest:8.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 10, 24])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--url", default="redis://127.0.0.1:6379/13")
    args = parser.parse_args()
    if args.messages < 1 or args.rounds < 1 or min(args.batches) < 1:
        parser.error("--messages, --rounds and every batch size must be at least 1")
    app = build_app(f"{args.url}?prefix={PREFIX}")  # its task never runs here
    client = redis.Redis.from_url(args.url.split("?", 1)[0])
    print(
        f"fetch, settle and record scripts: {args.messages:,} messages, medians of "
        f"{args.rounds} rounds, {args.url}; µs of the server per message"
    )
    print(
        f"{'step':8}{'batch':>7}{'calls':>8}{'server':>9}{'script':>9}{'commands':>10}{'rest':>8}"
    )
    try:
        app.kernel.call(app.kernel.connect())
        drop_keys(client, f"*{PREFIX}*")
        for batch in args.batches:
            rounds = [one_round(app, client, args.messages, batch) for _ in range(args.rounds)]
            for step, name in enumerate(("fetch", "settle", "record")):
                m = median([r[step] for r in rounds])
                print(
                    f"{name:8}{batch:7d}{m.calls:8.3f}{m.server:9.2f}{m.script:9.2f}"
                    f"{m.commands:10.2f}{m.rest:8.2f}",
                    flush=True,
                )
        print(f"per call        {'server':>9}{'script':>9}{'commands':>10}{'rest':>8}")
        empty = client.register_script("return 1")
        text = load_script("fetch")
        fetch = client.register_script(text)
        # The broker's arguments (see fetch.lua) for a queue nothing is published to.
        lease = repr(app.broker.lease)  # type: ignore[attr-defined]
        idle: list[str | int] = [f"{{{PREFIX}}}", "", lease, 10, 1, "idle"]

        def nothing_ready() -> None:
            idle[1] = repr(time.time())
            if len(fetch(args=idle)) > 3:
                raise SystemExit("the queue 'idle' was not empty: is something publishing to it?")

        per_call(client, "nothing ready", nothing_ready, 2000, args.rounds)
        # The fetch script's text up to its first step: the helpers and constants it defines
        # again on every call (Lua makes a closure of each function each time it runs).
        if _FIRST_STEP not in text:
            raise SystemExit("the fetch script changed: its first step is not where it was")
        helpers = client.register_script(text.split(_FIRST_STEP, 1)[0] + "\nreturn 1")
        per_call(client, "its definitions", lambda: helpers(args=idle), 2000, args.rounds)
        per_call(client, "empty script", lambda: empty(args=[]), 2000, args.rounds)
    finally:
        drop_keys(client, f"*{PREFIX}*")
        client.close()
        app.close()


if __name__ == "__main__":
    main()
