"""A Redis-backed app for the command-line tests; ``TASKFLOW_BROKER_URL`` names the server."""

from __future__ import annotations

import os
import time

from taskflow import App

app = App("cli-redis")


@app.task(name="cli.whoami")
def whoami(seconds: float) -> int:
    """Hold a slot for ``seconds``, then say which process ran the task."""
    time.sleep(seconds)
    return os.getpid()
