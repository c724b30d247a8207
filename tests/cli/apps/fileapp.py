"""A memory-broker app for the command-line process tests.

The memory broker lives inside one process, so this module feeds its own worker: when a
worker process imports it, it records the process (``imported-<pid>``) and enqueues a task
that writes ``touched-<pid>``; with ``TASKFLOW_TEST_LINGER`` set it also enqueues a task that
writes ``lingering-<pid>`` and then runs for a minute (until it is cancelled).
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from taskflow import App

app = App("cli-test")
OUT = Path(os.environ["TASKFLOW_TEST_DIR"])


def _mark(name: str) -> None:
    # Write then rename, so a test polling the directory never sees a half-written file.
    tmp = OUT / f".{name}.tmp"
    tmp.write_text(str(os.getpid()))
    tmp.rename(OUT / name)


@app.task
def touch(name: str) -> None:
    """Leave a mark that this worker ran a task."""
    _mark(name)


@app.task
async def linger(name: str) -> None:
    """Leave a mark, then keep running until cancelled."""
    _mark(name)
    await asyncio.sleep(60)


_mark(f"imported-{os.getpid()}")
touch.delay(f"touched-{os.getpid()}")
if os.environ.get("TASKFLOW_TEST_LINGER"):
    linger.delay(f"lingering-{os.getpid()}")
