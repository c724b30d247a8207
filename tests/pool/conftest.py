"""Fixtures of the process-pool tests: an app whose tasks the children know, and a guard
that fails a test which leaves child processes behind."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import psutil  # type: ignore[import-untyped, unused-ignore]
import pytest

from taskflow import App

from .poolapp import declare

APP_PATH = "tests.pool.poolapp:app"


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
