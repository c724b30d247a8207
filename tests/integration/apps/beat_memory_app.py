"""An in-memory app for ``taskflow worker --beat``: the beat and the worker share the
process, so an every-second schedule runs there; each run leaves ``ran-<task id>``."""

from __future__ import annotations

import os
from pathlib import Path

from taskflow import App, TaskContext

app = App("beat-memory")
OUT = Path(os.environ["TASKFLOW_TEST_DIR"])


@app.periodic(every=1.0, name="mark")
@app.task(bind=True)
def mark(ctx: TaskContext) -> None:
    """Leave a mark named after the run."""
    (OUT / f"ran-{ctx.id.replace(':', '_')}").write_text(str(os.getpid()))
