"""The app of the operator-command tests: its backend comes from ``TASKFLOW_BROKER_URL``.

``build(url)`` makes another instance with the same tasks, for the test's own producer and
worker.
"""

from __future__ import annotations

from taskflow import App

WORK = "work"
OTHER = "other"


def build(url: str | None = None) -> App:
    """An app with the tests' tasks, on ``url`` (default: ``$TASKFLOW_BROKER_URL``)."""
    application = App("ops-cli", broker=url, result_ttl=3600.0)

    @application.task(name="ops.add", queue=WORK)
    def add(x: int, y: int) -> int:
        return x + y

    @application.task(name="ops.boom", queue=WORK)
    def boom(n: int) -> int:
        raise ValueError("upstream returned 503")

    @application.task(name="ops.notify", queue=WORK, store_result=False)
    def notify(n: int) -> int:
        return n

    @application.task(name="ops.other", queue=OTHER)
    def other() -> None:
        return None

    return application


app = build()
