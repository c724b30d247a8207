"""An app for the NATS integration tests, run by ``taskflow worker -A`` in a subprocess.

``TASKFLOW_BROKER_URL`` carries the server, the prefix and the lease; results go to the
same server's KV. Each run of a task appends ``<pid>`` to the file ``$TF_RUNS_DIR/<task id>``
so tests can count runs without going through the backend under test.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from taskflow import App, TaskContext, current_task

URL = os.environ.get("TASKFLOW_BROKER_URL", "nats://127.0.0.1:4222")
RUNS = Path(os.environ.get("TF_RUNS_DIR", "."))

app = App("natsit", broker=URL)


def note_run() -> None:
    """Record that this process ran the current task."""
    ctx = current_task()
    assert ctx is not None
    with open(RUNS / ctx.id, "a") as fh:
        fh.write(f"{os.getpid()}\n")


@app.task(name="it.sleep", retries=2, timeout=60)
def sleep(seconds: float) -> int:
    """Sleep, then return the worker's pid."""
    note_run()
    time.sleep(seconds)
    return os.getpid()


@app.task(name="it.add", retries=2)
def add(x: int, y: int) -> int:
    """Add two numbers."""
    note_run()
    return x + y


@app.task(name="it.delivery", bind=True, timeout=60)
def delivery(ctx: TaskContext, seconds: float) -> list[int]:
    """Sleep (retries=0, the default), then return [pid, attempt, delivery]."""
    note_run()
    time.sleep(seconds)
    return [os.getpid(), ctx.attempt, ctx.delivery]


@app.task(name="it.once", on_lost="fail", timeout=60)
def once(seconds: float) -> int:
    """Sleep, then return the pid; must never run twice (dead-lettered if its worker dies)."""
    note_run()
    time.sleep(seconds)
    return os.getpid()
