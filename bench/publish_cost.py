"""Where the Redis server's time goes in the publish script of one ``delay()``.

Run from the project root (as a module)::

    python -m bench.publish_cost [--calls 4000] [--rounds 9] [--url redis://127.0.0.1:6379/13]

Calls the publish script as the broker ships it, one message per call (what a plain
``delay()`` sends), the same with a body short enough for Redis's compact hash encoding
(up to the default ``hash-max-listpack-value`` of 64 bytes; a real envelope is longer, so
its message's hash is a table: this row bounds what keeping the body out of the hash could
save, a layout that would write the body besides), then the same message through the
batch's path, then copies of it with one more step taken out each time, and an empty
script. Printed per variant: the server's time per call (``INFO commandstats``, the
``EVALSHA`` time), the minimum and the median of the rounds. The differences between
consecutive rows are what each step costs; the copies do not publish correctly, so the
database (``--url``, DB 13 by default) is flushed before each round: use a database of its own.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time

import redis

from taskflow._redis.scripts import load_script

# Each step out of the shipped script, cumulatively: (label, text, replacement).
STEPS = (
    ("without the wake-up", "    wake(q, 1)\n", ""),
    (
        "without the queue-limit look-up",
        "local limit = redis.call('HGET', P .. ':limits', q)",
        "local limit = nil",
    ),
    (
        "without the look-up of an earlier copy",
        "local old = redis.call('HGET', key, 'q')",
        "local old = nil",
    ),
    (
        "without the ready set's ZADD and the sequence's INCR",
        "    redis.call('ZADD', qkey(q, 'ready'), ready_score(pri), id)\n",
        "",
    ),
    (
        "without the message's hash (HSET)",
        "  redis.call('HSET', key, 'b', body, 'q', q, 'p', pri, 'md', maxd, 'dc', 0, 'st', 'r', "
        "'tk', '')\n",
        "",
    ),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    parser.add_argument("--calls", type=int, default=4000)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--url", default="redis://127.0.0.1:6379/13")
    args = parser.parse_args()
    client = redis.Redis.from_url(args.url)
    ids = itertools.count()

    def measure(label: str, text: str, body: int = 120) -> None:
        script = client.register_script(text)
        per_call = []
        for _ in range(args.rounds):
            client.flushdb()
            client.config_resetstat()
            for _ in range(args.calls):
                now = repr(time.time())
                script(args=["{p}", now, 1, f"m{next(ids)}", "default", b"x" * body, 0, "", 3])
            stats = client.info("commandstats").get("cmdstat_evalsha", {})
            per_call.append(stats.get("usec", 0) / args.calls)
        print(f"{label:58s} {min(per_call):7.2f} {statistics.median(per_call):7.2f}")

    print(f"publish script, one message per call, {args.calls:,} calls x {args.rounds} rounds")
    print(f"{'variant':58s} {'min µs':>7s} {'median':>7s}")
    text = load_script("publish")
    measure("as shipped", text)
    # A body of up to 64 bytes keeps the message's hash in Redis's compact encoding (the
    # default hash-max-listpack-value); a real envelope is longer, so the hash is a table.
    measure("as shipped, a 60-byte body (a compact hash)", text, body=60)
    if "if n == 1 then" not in text:
        raise SystemExit("the publish script changed: no one-message path to compare")
    measure("the batch's path for the one message", text.replace("if n == 1 then", "if false then"))
    for label, old, new in STEPS:
        if old not in text:
            raise SystemExit(f"the publish script changed: cannot take out {label!r}")
        text = text.replace(old, new)
        measure(label, text)
    measure("an empty script", "return {}")
    client.flushdb()
    client.close()


if __name__ == "__main__":
    main()
