"""A memory-broker app for the JSON log tests: it feeds its own worker when imported.

``work`` logs through the program's own logger and fails on ``boom``; its argument is a
secret (``$LOGAPP_SECRET``) that must never reach a log line. With ``LOGAPP_BASIC_CONFIG`` set the
module configures logging itself, which the command line must leave alone.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from taskflow import App

SECRET = os.environ.get("LOGAPP_SECRET", "secret")

if os.environ.get("LOGAPP_BASIC_CONFIG"):
    logging.basicConfig(level=logging.INFO, format="USER %(levelname)s %(name)s %(message)s")

app = App("logapp")
OUT = Path(os.environ["TASKFLOW_TEST_DIR"])
log = logging.getLogger("logapp")


def _mark(name: str) -> None:
    tmp = OUT / f".{name}.tmp"
    tmp.write_text(str(os.getpid()))
    tmp.rename(OUT / name)


@app.task(name="logapp.work")
def work(secret: str, fail: bool) -> str:
    """Log from inside the task, then fail or leave a mark."""
    log.info("working on it")
    if fail:
        raise RuntimeError("boom")
    _mark(f"done-{os.getpid()}")
    return secret


_mark(f"imported-{os.getpid()}")
work.delay(SECRET, True)
work.delay(SECRET, False)
