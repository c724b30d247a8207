"""Closing an app whose NATS server stopped answering returns, within a bound, and says so.

The test runs its own nats-server and stops it (SIGSTOP: the connection stays up but
nothing answers, as with a server that hangs or a network that drops packets) before the
app closes.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from pathlib import Path

import pytest

from taskflow import App
from taskflow._nats.connection import CLOSE_STEP
from tests.integration.nats_helpers import private_nats, shared_url

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_closing_an_app_whose_nats_server_hangs_returns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = tmp_path / "store"
    store.mkdir()
    with private_nats(store) as (port, procs):
        url, _ = shared_url(lease=5.0, port=port)
        app = App("hung-server", broker=url)

        @app.task(name="close.noop")
        def noop() -> None: ...

        noop.delay()  # both connections up, the broker's consumers subscribed
        os.kill(procs[0].pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            with caplog.at_level(logging.WARNING):
                app.close()  # no TimeoutError
            took = time.monotonic() - started
        finally:
            os.kill(procs[0].pid, signal.SIGCONT)
    # The broker drains then closes, the result store closes: a bounded step each.
    assert took < 3 * CLOSE_STEP + 1.0
    assert f"127.0.0.1:{port}" in caplog.text
    assert "closing the connection without draining it" in caplog.text
    assert "closing the backends took longer" not in caplog.text  # within the kernel's bound
