"""A Redis-backed app for the cross-process trace test (``TASKFLOW_BROKER_URL``)."""

from __future__ import annotations

from taskflow import App

app = App("traceapp")


@app.task(name="obs.shout")
def shout(word: str) -> int:
    """Return the length of ``word`` (a secret the spans must not show)."""
    return len(word)
