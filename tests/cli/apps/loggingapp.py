"""A memory-broker app that configures logging itself, as many programs do.

``TASKFLOW_TEST_LOGGING=root`` calls ``logging.basicConfig`` into ``user.log`` in the test
directory; ``=taskflow`` puts a handler of its own on the ``taskflow`` logger instead. Either
way the worker's lines must reach that file, and the command line must add no handler.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from taskflow import App

OUT = Path(os.environ["TASKFLOW_TEST_DIR"])
FORMAT = "USER %(levelname)s %(name)s: %(message)s"

if os.environ.get("TASKFLOW_TEST_LOGGING") == "root":
    logging.basicConfig(filename=OUT / "user.log", format=FORMAT, level=logging.INFO)
else:
    handler = logging.FileHandler(OUT / "user.log")
    handler.setFormatter(logging.Formatter(FORMAT))
    logging.getLogger("taskflow").addHandler(handler)

app = App("cli-logging")


@app.task
def touch(name: str) -> None:
    """Leave a mark that this worker ran a task."""
    (OUT / name).write_text(str(os.getpid()))


touch.delay(f"touched-{os.getpid()}")
