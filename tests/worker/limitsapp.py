"""Tasks with and without a ``time_limit``, for the worker's warning about the limits it
cannot enforce; a process pool's children import ``app`` (the same declarations)."""

from __future__ import annotations

from typing import Any

from taskflow import App

APP_PATH = "tests.worker.limitsapp:app"


def declare_limited(target: App) -> dict[str, Any]:
    """Declare on ``target``: sync and async tasks with a time_limit on ``default``, a sync
    one on ``reports``, and a sync one without a limit."""

    async def run_async() -> None:
        return None

    def run_sync() -> None:
        return None

    return {
        "async": target.task(name="limits.async", time_limit=5)(run_async),
        "sync": target.task(name="limits.sync", time_limit=5)(run_sync),
        "report": target.task(name="limits.report", queue="reports", time_limit=5)(run_sync),
        "plain": target.task(name="limits.plain")(run_sync),
    }


app = App("limits-children")
declare_limited(app)
