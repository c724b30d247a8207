"""An in-memory app for the ``taskflow schedules`` command tests (run in-process)."""

from __future__ import annotations

from taskflow import App

app = App("schedules-test")


@app.task(name="shop.report")
def report(kind: str) -> str:
    """A task to schedule from the command line."""
    return kind


@app.periodic(cron="0 3 * * *", name="nightly", timezone="Europe/Berlin")
def nightly() -> None:
    """A schedule declared in code."""
