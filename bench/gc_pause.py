"""A full garbage collection in a worker process, before and after its start-up is frozen.

Run from the project root (as a module)::

    python -m bench.gc_pause [--rounds 5]

Imports what a ``taskflow worker`` process imports (the command line, the worker, a Redis
app: ``bench._incr_app``), then times ``gc.collect()`` ``--rounds`` times; then freezes what
exists (``gc.freeze()``, as the worker does once its app is connected) and times it again.
Printed: the objects a full collection walks and those frozen, and the median and longest
collection in milliseconds, each way. A full collection stops every thread of the
process: a pickup that meets one waits for it.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time

import bench._incr_app  # noqa: F401  -- a Redis app, as a worker imports its app
import taskflow.cli.main
import taskflow.worker.worker  # noqa: F401


def _collections(rounds: int) -> list[float]:
    times = []
    for _ in range(rounds):
        began = time.perf_counter()
        gc.collect()
        times.append((time.perf_counter() - began) * 1000.0)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    print(f"{'':24}{'walked':>10}{'frozen':>10}{'median ms':>11}{'max ms':>9}")
    for label in ("as started", "start-up frozen"):
        if label == "start-up frozen":
            gc.freeze()
        walked, frozen = len(gc.get_objects()), gc.get_freeze_count()
        times = _collections(args.rounds)
        print(f"{label:24}{walked:10,}{frozen:10,}{statistics.median(times):11.2f}"
              f"{max(times):9.2f}")  # fmt: skip
    gc.unfreeze()


if __name__ == "__main__":
    main()
