"""Tasks and small helpers shared by the operations API tests."""

from __future__ import annotations

from typing import Any

import pytest

from taskflow import App
from taskflow.context import TaskContext
from taskflow.errors import BrokerError


def flaky(app: App, queue: str, failures: int, retries: int = 0, name: str = "") -> Any:
    """A task that fails its first ``failures`` runs; ``.attempts`` lists each run's attempt."""
    attempts: list[int] = []

    @app.task(
        name=name or f"flaky.{queue}", queue=queue, retries=retries, retry_backoff=0.0, bind=True
    )
    def task(ctx: TaskContext, x: int) -> int:
        attempts.append(ctx.attempt)
        if len(attempts) <= failures:
            raise ValueError("not yet")
        return x * 2

    task.attempts = attempts  # type: ignore[attr-defined]
    return task


def noop(app: App, queue: str, name: str = "") -> Any:
    """A task that does nothing."""

    @app.task(name=name or f"noop.{queue}", queue=queue)
    def task(x: int = 0) -> int:
        return x

    return task


def fails_after(broker: Any, method: str, calls: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """``broker.<method>`` answers ``calls`` times, then raises BrokerError (a server that
    stopped answering part-way through an action)."""
    real = getattr(broker, method)
    answered = 0

    async def failing(*args: Any, **kwargs: Any) -> Any:
        nonlocal answered
        if answered >= calls:
            raise BrokerError("the server stopped answering")
        answered += 1
        return await real(*args, **kwargs)

    monkeypatch.setattr(broker, method, failing)
