"""A Redis-backed app for the command-line tests; ``TASKFLOW_BROKER_URL`` names the server."""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

from taskflow import App

app = App("cli-redis")


@app.task(name="cli.whoami")
def whoami(seconds: float) -> int:
    """Hold a slot for ``seconds``, then say which process ran the task."""
    time.sleep(seconds)
    return os.getpid()


@app.task(name="cli.hold")
def hold() -> int:
    """Write ``started-<pid>``; in a process started with ``TASKFLOW_TEST_BLOCK``, then
    block in C for a minute (no cancellation interrupts that); say which process ran it."""
    (Path(os.environ["TASKFLOW_TEST_DIR"]) / f"started-{os.getpid()}").write_text("")
    if os.environ.get("TASKFLOW_TEST_BLOCK"):
        time.sleep(60)
    return os.getpid()


@app.task(name="cli.chatty")
def chatty(order: str) -> int:
    """Log a line naming ``order`` through the app's own logger; say which process ran it."""
    logging.getLogger("cliapp.body").info("charging %s", order)
    return os.getpid()


@app.task(name="cli.quits", retries=2)
def quits(code: int) -> None:
    """Call ``sys.exit(code)``, as a command-line main() turned into a task would."""
    sys.exit(code)
