"""The writes of a ``delay()`` that stores its result, three ways in turn: one after the
other; the record sent, the message published, then the record's answer read (what
``Enqueuer.run_blocking`` does on a store with atomic creates); and the record created by
the publish script itself (what it does where the broker is linked to the store, the
default on Redis: ``Broker.publish_recording_blocking``).

Run from the project root::

    python -m bench.delay_record [--calls 3000] [--rounds 4] [--url redis://127.0.0.1:6379/15]

All three write the same queued record and publish the same message through the app's
own backends, from this thread, alternating in rounds of ``--calls`` within one process, so
that the machine's drift falls on them alike. Printed per round: the p10 and p50 time of
one send, in microseconds. Keys live under the prefix ``taskflow-delayrec`` and are deleted
after each round.
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid

import redis

from bench._keys import drop_keys
from taskflow import App
from taskflow.brokers.base import Message

_RECORD = {"status": "queued", "name": "bench.noop", "queue": "default"}


_WAYS = {
    "apart": "record, then publish",
    "split": "send, publish, read",
    "linked": "publish with the record",
}


def _send(bench: App, way: str) -> None:
    tid = uuid.uuid4().hex
    messages = [Message(id=tid, queue="default", body=b"x" * 200, task="bench.noop")]
    results, broker = bench.results, bench.broker
    if way == "linked":
        broker.publish_recording_blocking(messages, [(tid, _RECORD)])
    elif way == "split":
        finish = results.begin_create_many_blocking([(tid, _RECORD)], None)
        broker.publish_blocking(messages)
        finish()
    else:
        results.create_many_blocking([(tid, _RECORD)], None)
        broker.publish_blocking(messages)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--url", default="redis://127.0.0.1:6379/15")
    args = parser.parse_args()
    bench = App("delayrec", broker=f"{args.url}?prefix=taskflow-delayrec")
    client = redis.Redis.from_url(args.url)
    bench.kernel.call(bench.kernel.connect())
    bench.kernel.call(bench.kernel.declare("default"))
    medians: dict[str, list[float]] = {way: [] for way in _WAYS}
    print(f"{'round':>5}  {'way':<34}{'p10 µs':>8}{'p50 µs':>8}")
    try:
        for rnd in range(args.rounds):
            for way, label in _WAYS.items():
                times = []
                for _ in range(args.calls):
                    began = time.perf_counter()
                    _send(bench, way)
                    times.append(time.perf_counter() - began)
                times.sort()
                p10, p50 = times[len(times) // 10] * 1e6, statistics.median(times) * 1e6
                medians[way].append(p50)
                print(f"{rnd + 1:>5}  {label:<34}{p10:8.0f}{p50:8.0f}", flush=True)
                drop_keys(client, "*taskflow-delayrec*")
    finally:
        client.close()
        bench.close()
    summary = ", ".join(f"{_WAYS[w]} {statistics.median(m):.0f}" for w, m in medians.items())
    print(f"median of the rounds' p50 (µs): {summary}")


if __name__ == "__main__":
    main()
