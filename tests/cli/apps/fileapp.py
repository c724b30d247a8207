"""A memory-broker app for the command-line process tests.

The memory broker lives inside one process, so this module feeds its own worker: when a
worker process imports it, it records the process (``imported-<pid>``) and enqueues a task
that writes ``touched-<pid>``; with ``TASKFLOW_TEST_LINGER`` set it also enqueues a task that
writes ``lingering-<pid>`` and then runs for a minute (until it is cancelled). It also
describes how its process was set up in ``setup-<pid>`` (JSON), for the supervisor's tests.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path

from taskflow import App

app = App("cli-test")
OUT = Path(os.environ["TASKFLOW_TEST_DIR"])


def _mark(name: str, text: str | None = None) -> None:
    # Write then rename, so a test polling the directory never sees a half-written file.
    tmp = OUT / f".{name}.tmp"
    tmp.write_text(str(os.getpid()) if text is None else text)
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


def _setup() -> str:
    devnull, stdin = os.stat(os.devnull), os.fstat(0)
    return json.dumps(
        {
            "supervisor": os.environ.get("TASKFLOW_SUPERVISOR_PID"),
            "index": os.environ.get("TASKFLOW_WORKER_INDEX"),
            "test_dir": os.environ.get("TASKFLOW_TEST_DIR"),
            "own_group": os.getpgid(0) == os.getpid(),
            "stdin_is_devnull": (stdin.st_dev, stdin.st_ino) == (devnull.st_dev, devnull.st_ino),
            "sigchld_default": signal.getsignal(signal.SIGCHLD) == signal.SIG_DFL,
            "blocked": sorted(signal.pthread_sigmask(signal.SIG_BLOCK, [])),
        }
    )


_mark(f"setup-{os.getpid()}", _setup())
_mark(f"imported-{os.getpid()}")
touch.delay(f"touched-{os.getpid()}")
if os.environ.get("TASKFLOW_TEST_LINGER"):
    linger.delay(f"lingering-{os.getpid()}")
