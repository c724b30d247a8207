"""An app for the NATS integration tests, run by ``taskflow worker -A`` in a subprocess.

``TASKFLOW_BROKER_URL`` carries the server, the prefix and the lease; results go to the
same server's KV. Each run of a task appends ``<pid>`` to the file ``$TF_RUNS_DIR/<task id>``
so tests can count runs without going through the backend under test.
"""

from __future__ import annotations

import os
from pathlib import Path

from taskflow import App, current_task
from tests.integration.worker_tasks import register_tasks

URL = os.environ.get("TASKFLOW_BROKER_URL", "nats://127.0.0.1:4222")
RUNS = Path(os.environ.get("TF_RUNS_DIR", "."))

app = App("natsit", broker=URL)


def note_run() -> None:
    """Record that this process ran the current task."""
    ctx = current_task()
    assert ctx is not None
    with open(RUNS / ctx.id, "a") as fh:
        fh.write(f"{os.getpid()}\n")


register_tasks(app, note_run)
