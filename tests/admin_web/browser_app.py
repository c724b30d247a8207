"""The app of the browser tests. ``make_app(url)`` builds it on an SQLite file; a worker
process loads ``app`` (built from ``TASKFLOW_BROKER_URL``). ``orders.charge`` fails while
the file named by ``ADMIN_FAIL_FLAG`` exists."""

from __future__ import annotations

import os

from taskflow import App


def make_app(url: str) -> App:
    """The app with its three tasks."""
    application = App("adminweb", broker=url)

    @application.task(name="orders.charge", queue="orders", retries=0)
    def charge(order: int) -> str:
        flag = os.environ.get("ADMIN_FAIL_FLAG", "")
        if flag and os.path.exists(flag):
            raise RuntimeError("card declined")
        return f"charged {order}"

    @application.task(name="mail.send", queue="mail")
    def send(to: str) -> str:
        return to

    @application.task(name="reports.daily", queue="reports")
    def daily() -> str:
        return "done"

    return application


app = make_app(os.environ.get("TASKFLOW_BROKER_URL", "memory://"))
