"""An app module that configures logging when imported, as many do; only the process-pool
tests' children import it (never the test process: its configuration would stay)."""

from __future__ import annotations

import logging

from taskflow import App

logging.basicConfig(level=logging.DEBUG)
log = logging.getLogger("logapp")
log.warning("logapp imported")

app = App("pool-logs")


@app.task(name="logapp.say")
def say(text: str) -> int:
    """Log ``text`` at INFO and at WARNING."""
    log.info("info %s", text)
    log.warning("warning %s", text)
    return len(text)
