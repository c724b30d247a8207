"""Waiting for a queue to drain without loading the server that is being measured."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

# The finest step of the wait: the error of a drain's end time.
STEP = 0.002
# The coarsest: a wait never sleeps longer than this between two looks.
MAX_SLEEP = 0.25


def wait_drained(depth: Callable[[], Mapping[str, int]], started: float, tasks: int) -> float:
    """Block until ``depth()`` counts no message left; return the seconds since ``started``.

    Each look at the depth is a call to the server under test (on NATS 2.9 a consumer's
    info scans the stream: tens of milliseconds of server CPU with a deep backlog), so the
    wait sleeps for about half the time the rest should take at the rate seen so far and
    looks every ``STEP`` seconds only near the end: a few dozen looks per drain instead of
    one every few milliseconds, with the end still seen within ``STEP``.
    """
    while True:
        counts = depth()
        left = counts["ready"] + counts["inflight"] + counts["scheduled"]
        elapsed = time.perf_counter() - started
        if left == 0:
            return elapsed
        done = tasks - left
        if done <= 0:
            time.sleep(STEP)
            continue
        time.sleep(min(MAX_SLEEP, max(STEP, 0.5 * left * elapsed / done)))
