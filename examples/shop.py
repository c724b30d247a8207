"""The tasks of the quickstart: an app that producers and workers in separate processes share.

``App("shop")`` takes its broker from ``TASKFLOW_BROKER_URL`` (results go where the broker
is), and runs on ``memory://`` when that is not set. ``examples/quickstart.py`` points it at
an SQLite file, then runs ``taskflow worker -A examples.shop`` in one process and sends
these tasks from another.
"""

from __future__ import annotations

from dataclasses import dataclass

from taskflow import App, TaskContext

app = App("shop")


@dataclass
class Invoice:
    customer: str
    cents: int


@app.task(priority=9)
def urgent(message: str) -> str:
    return f"urgent: {message}"


@app.task(priority=0)
def routine(n: int) -> int:
    return n * n


@app.task(bind=True, retries=3, retry_backoff=0.05, retry_jitter=False)
def flaky_payment(ctx: TaskContext, invoice: Invoice) -> str:
    """Fails twice (a flaky gateway), then succeeds on the third attempt."""
    if ctx.attempt < 3:
        raise ConnectionError("payment gateway timed out")
    return f"charged {invoice.customer} {invoice.cents / 100:.2f}"


@app.task
def broken(x: int) -> int:
    raise ValueError(f"cannot handle {x}")


@app.task
async def total(invoices: list[Invoice]) -> Invoice:
    return Invoice("all", sum(i.cents for i in invoices))
