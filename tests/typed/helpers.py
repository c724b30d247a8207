"""Helpers for the typed tests: raw publishing, dead-letter inspection and running mypy."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from taskflow import App
from taskflow.brokers import Message
from taskflow.brokers.base import BrokerAdmin, DeadLetter

PAYLOAD_ERROR = "taskflow.errors.PayloadError"


def publish_raw(app: App, task_id: str, body: bytes, queue: str = "default") -> None:
    """Publish envelope bytes as any producer would, bypassing taskflow's send path."""

    async def go() -> None:
        await app.kernel.connect()
        await app.kernel.declare(queue)
        await app.broker.publish([Message(id=task_id, queue=queue, body=body)])

    app.kernel.call(go())


def dead_letters(app: App, queue: str = "default") -> list[DeadLetter]:
    """The queue's dead-letter list."""
    assert isinstance(app.broker, BrokerAdmin)
    return app.kernel.call(app.broker.dead_letters(queue))


def record(app: App, task_id: str) -> dict[str, Any]:
    """The stored result record of ``task_id`` (it must exist)."""
    found = app.kernel.call(app.results.get(task_id))
    assert found is not None, f"no record for {task_id}"
    return found


def assert_dead_lettered_with_payload_error(app: App, task_id: str, queue: str = "default") -> str:
    """The task failed with PayloadError and its message is in the dead-letter list."""
    letters = [d for d in dead_letters(app, queue) if d.id == task_id]
    assert len(letters) == 1, dead_letters(app, queue)
    assert letters[0].reason == "payload"
    assert (letters[0].error or "").startswith(PAYLOAD_ERROR)
    stored = record(app, task_id)
    assert stored["status"] == "failed"
    assert stored["error"]["type"] == PAYLOAD_ERROR
    return str(stored["error"]["message"])


def run_strict_mypy(
    target: str, cwd: Path, cache_dir: Path, env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    """``mypy --strict`` on ``target``, run from ``cwd`` with ``env``, one line per error."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--no-error-summary",
            "--hide-error-context",
            "--cache-dir",
            str(cache_dir),
            target,
        ],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=280,
        check=False,
    )
