"""A script that runs its worker with ``app.run_worker()``, as a program of its own.

It enqueues a task that writes ``touched-<pid>``; with ``TASKFLOW_TEST_BLOCK`` set, also a
plain ``def`` task that writes ``blocking-<pid>`` and then sleeps for a minute (which no
cancellation can interrupt). It writes ``returned-<pid>`` once ``run_worker`` returned.
It logs to stderr at INFO, as a program that configures logging. The garbage collector's
thresholds go to ``gc-before``, ``gc-serving`` (written by the task) and ``gc-after``;
``TASKFLOW_TEST_GC`` is the ``gc_threshold`` it passes, if set.
"""

from __future__ import annotations

import gc
import logging
import os
import time
from pathlib import Path

from taskflow import App

app = App("cli-run-worker")
OUT = Path(os.environ["TASKFLOW_TEST_DIR"])


def _mark(name: str, text: str | None = None) -> None:
    # Write then rename, so a test polling the directory never sees a half-written file.
    tmp = OUT / f".{name}.tmp"
    tmp.write_text(str(os.getpid()) if text is None else text)
    tmp.rename(OUT / name)


def _thresholds() -> str:
    return " ".join(str(n) for n in gc.get_threshold())


@app.task
def touch(name: str) -> None:
    """Leave a mark that this worker ran a task (and the collector's thresholds then)."""
    _mark("gc-serving", _thresholds())
    _mark(name)


@app.task
def block(name: str) -> None:
    """Leave a mark, then block in C for a minute."""
    _mark(name)
    time.sleep(60)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    touch.delay(f"touched-{os.getpid()}")
    if os.environ.get("TASKFLOW_TEST_BLOCK"):
        block.delay(f"blocking-{os.getpid()}")
    _mark("gc-before", _thresholds())
    given = os.environ.get("TASKFLOW_TEST_GC")
    tuning = {} if given is None else {"gc_threshold": int(given)}
    app.run_worker(concurrency=2, grace=60.0, **tuning)
    _mark("gc-after", _thresholds())
    _mark(f"returned-{os.getpid()}")
