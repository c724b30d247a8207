"""An SQLite app for the beat process test: an every-second schedule whose task records each
run (its task id, ``beat:tick:<fire time>``) as one line appended to ``runs.txt`` in
``TASKFLOW_TEST_DIR``; the database file is ``BEAT_TEST_URL``."""

from __future__ import annotations

import os
from pathlib import Path

from taskflow import App, TaskContext

app = App("sqlitebeat", broker=os.environ["BEAT_TEST_URL"])
RUNS = Path(os.environ["TASKFLOW_TEST_DIR"]) / "runs.txt"


@app.periodic(every=1.0, name="tick")
@app.task(bind=True)
def tick(ctx: TaskContext) -> None:
    """Record one run (one short append: lines of concurrent runs do not mix)."""
    with open(RUNS, "a", encoding="ascii") as runs:
        runs.write(f"{ctx.id}\n")
