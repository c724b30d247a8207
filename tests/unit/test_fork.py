"""An App used before a fork, in the forked child.

Its event loop thread does not exist in the child and its connections are the parent's
(an SQLite connection carried across a fork can corrupt the file): the child's first call
raises ConfigError at once, where it used to hang for ever (a loop call) or share the
parent's connection (a blocking send). An App closed before the fork, or not used before
it, works in the child.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from taskflow import App
from taskflow.errors import ConfigError


def in_child(body: Callable[[], str]) -> str:
    """Run ``body`` in a forked child; what it returned or raised, as text."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover -- the child reports through the pipe
        os.close(read)
        signal.alarm(20)  # a hang fails the test instead of stalling it
        try:
            out = body()
        except BaseException as exc:
            out = f"{type(exc).__name__}: {exc}"
        os.write(write, out.encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        data = pipe.read().decode()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, (status, data)
    return data


@pytest.fixture(params=["memory", "sqlite"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return "memory://" if request.param == "memory" else f"sqlite:///{tmp_path / 'fork.db'}"


def test_an_app_used_before_a_fork_refuses_at_once_in_the_child(url: str) -> None:
    with App("forked", broker=url) as app:

        @app.task
        def add(x: int, y: int) -> int:
            return x + y

        sent = add.delay(1, 2)
        parent = os.getpid()

        def child() -> str:
            said = []
            for call in (lambda: add.delay(3, 4), lambda: sent.status, app.close):
                try:
                    call()
                    said.append("ok")
                except ConfigError as exc:
                    said.append(str(exc))
            return "\n".join(said)

        refused_send, refused_read, closed = in_child(child).split("\n")
        assert refused_send == refused_read
        assert refused_send.startswith(
            f"app 'forked' was used in process {parent} before this process forked from it"
        )
        assert "app.close()" in refused_send
        assert closed == "ok"  # closing the inherited app does no I/O and raises nothing
        assert add.delay(5, 6).status.value == "queued"  # the parent carries on
        assert sent.status.value == "queued"


def test_an_app_closed_before_a_fork_or_not_used_works_in_the_child(url: str) -> None:
    with App("forked", broker=url) as app:

        @app.task
        def add(x: int, y: int) -> int:
            return x + y

        def child() -> str:
            sent = add.delay(3, 4)
            status = sent.status.value
            app.close()
            return status

        assert in_child(child) == "queued"  # not used before the fork
        add.delay(1, 2)
        app.close()
        assert in_child(child) == "queued"  # closed before the fork
        assert add.delay(5, 6).status.value == "queued"  # and the parent opens it again
