"""Fixtures of the process-pool tests: an app whose tasks the children know, and a guard
that fails a test which leaves child processes behind."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psutil  # type: ignore[import-untyped, unused-ignore]
import pytest

from taskflow import App, codec
from taskflow.message import Envelope
from taskflow.worker import _child

from .poolapp import declare

APP_PATH = "tests.pool.poolapp:app"

PoolApp = tuple[App, dict[str, Any]]
"""What :func:`pool_app` gives: the app and its tasks by name."""


def children() -> list[psutil.Process]:
    """The live (not zombie) descendants of the test process."""
    found = []
    for proc in psutil.Process().children(recursive=True):
        try:
            if proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except psutil.NoSuchProcess:
            pass
    return found


@pytest.fixture(autouse=True)
def no_leaked_children() -> Iterator[None]:
    """Fail a test that leaves child processes running (after 3 s to end)."""
    yield
    deadline = time.monotonic() + 3.0
    left = children()
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = children()
    for proc in left:
        proc.kill()
    assert not left, f"test leaked child processes: {[p.pid for p in left]}"


@pytest.fixture
def pool_app() -> Iterator[tuple[App, dict[str, Any]]]:
    """A memory app with the tasks of :mod:`.poolapp`, closed after the test."""
    application = App("pool-test")
    yield application, declare(application)
    application.close()


class DrivenChild:
    """A child of the process pool driven directly through its three pipes."""

    def __init__(self, proc: subprocess.Popen[bytes], requests: int, replies: int, logs: int):
        self.proc = proc
        self.requests, self.replies, self.logs = requests, replies, logs
        self.status: int | None = None
        self.stderr: bytes | None = None

    def start(self, app: str, **setup: Any) -> None:
        """Send the set-up for ``app`` (``module:attr``) and wait for the child's ready."""
        _child._send(self.requests, {"app": app, "path": list(sys.path), **setup})
        assert _child._recv(self.replies)[0] == "ready"

    def run(self, task: str, *args: Any) -> tuple[Any, ...]:
        """Run ``task`` as ``t-1`` and return the reply: ``(outcome, rss, logged)``."""
        env = Envelope(id="t-1", task=task, queue="default", args=list(args))
        fields = {"id": "t-1", "name": task, "attempt": 1, "retries": 0}
        _child._send(self.requests, (codec.encode_envelope(env), fields))
        reply: tuple[Any, ...] = _child._recv(self.replies)
        return reply

    def logged(self) -> dict[str, Any]:
        """The next record the child sent to the worker, as the dict it sent."""
        record: dict[str, Any] = _child._recv(self.logs)
        return record


@contextmanager
def driven_child(**popen: Any) -> Iterator[DrivenChild]:
    """Start ``python -m taskflow.worker._child`` with its pipes; on leaving, close the
    request pipe (which ends the child) and keep its exit status and captured stderr."""
    req_r, req_w = os.pipe()
    res_r, res_w = os.pipe()
    log_r, log_w = os.pipe()
    theirs = (req_r, res_w, log_w)
    proc = subprocess.Popen(
        [sys.executable, "-m", "taskflow.worker._child", *map(str, theirs)],
        pass_fds=theirs,
        **popen,
    )
    for fd in theirs:
        os.close(fd)
    child = DrivenChild(proc, req_w, res_r, log_r)
    try:
        yield child
    finally:
        os.close(req_w)
        child.stderr = proc.communicate(timeout=10)[1]
        child.status = proc.returncode
        os.close(res_r)
        os.close(log_r)
