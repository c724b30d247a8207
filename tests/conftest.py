"""Shared fixtures: a memory app that is always closed, a fake clock, and a guard that
fails any test which leaks threads."""

from __future__ import annotations

import gc
import logging
import os
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from taskflow import App, FakeClock

IN_CI = os.environ.get("CI") == "true"


@pytest.fixture(autouse=True)
def no_leaked_threads() -> Iterator[None]:
    """Fail a test that leaves threads running (after a short grace to unwind)."""
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + 3.0
    leaked: list[threading.Thread] = []
    while time.monotonic() < deadline:
        leaked = [t for t in threading.enumerate() if t not in before and t.is_alive()]
        if not leaked:
            return
        time.sleep(0.01)
    pytest.fail(f"test leaked threads: {[t.name for t in leaked]}")


@pytest.fixture(autouse=True, scope="module")
def leaks_found_in_their_module() -> Iterator[None]:
    """Collect the garbage a module's tests left: an unclosed socket or file caught in a
    reference cycle (an exception's traceback holding it, say) then fails the module that
    leaked it (``filterwarnings = error`` makes its ResourceWarning an error), rather than
    whichever test of a later module the collector happens to run in."""
    yield
    gc.collect()


# A URL whose password shows in clear (``scheme://user:secret@``), or a secret query value
# (``password=secret``): what taskflow masks as ``***`` everywhere it shows a URL.
_CLEAR_SECRET = re.compile(
    r"[a-z][a-z0-9+.-]*://[^\s/@:]*:(?!\*\*\*@)[^\s/@]+@"
    r"|[?&][a-z_]*(?:password|token|secret)=(?!\*\*\*)[^&\s'\"]+",
    re.IGNORECASE,
)


class _SecretWatch(logging.Handler):
    """Collects the log records that show a password or token in clear."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.leaks: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
        except Exception:  # a malformed record is not this check's business
            return
        if _CLEAR_SECRET.search(text):
            self.leaks.append(f"{record.name}: {text}")


@pytest.fixture(autouse=True)
def no_clear_secret_in_logs() -> Iterator[None]:
    """Fail a test during which any log record showed a URL password or a secret query
    value in clear (every test of the suite: logs must mask them)."""
    watch = _SecretWatch()
    root = logging.getLogger()
    root.addHandler(watch)
    try:
        yield
    finally:
        root.removeHandler(watch)
    assert not watch.leaks, f"log records show a secret in clear: {watch.leaks}"


@pytest.fixture
def app() -> Iterator[App]:
    """An in-memory app, closed after the test."""
    application = App("test")
    yield application
    application.close()


@pytest.fixture
def clock() -> FakeClock:
    """A clock that moves only when the test says so."""
    return FakeClock()


@pytest.fixture
def fake_app(clock: FakeClock) -> Iterator[App]:
    """An in-memory app on a fake clock, closed after the test."""
    application = App("fake", clock=clock)
    yield application
    application.close()


@contextmanager
def loop_hops(app: App) -> Iterator[list[object]]:
    """Records every call a caller's thread makes onto ``app``'s event loop meanwhile."""
    hops: list[object] = []
    real_call = app.kernel.loop.call

    def counting_call(coro: object, timeout: float | None = None) -> object:
        hops.append(coro)
        return real_call(coro, timeout)  # type: ignore[arg-type]

    app.kernel.loop.call = counting_call  # type: ignore[method-assign]
    try:
        yield hops
    finally:
        app.kernel.loop.call = real_call  # type: ignore[method-assign]


def require_service(name: str, host: str, port: int) -> None:
    """Skip loudly when a real service is down, but fail in CI where it must be up."""
    import socket

    try:
        with socket.create_connection((host, port), timeout=1.0):
            return
    except OSError:
        message = f"{name} is not reachable at {host}:{port} (run: bash scripts/services.sh)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
