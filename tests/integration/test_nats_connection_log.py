"""A routine NATS restart is logged as one WARNING line per disconnect and per reconnect.

The test runs its own nats-server (file store in a temp dir) so that it may restart it
under an embedded worker, and reads what the logging system received meanwhile.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest

from taskflow import App
from tests.integration.nats_helpers import private_nats, shared_url, start_nats, stop

pytestmark = pytest.mark.integration


def test_a_server_restart_logs_one_line_each_way_and_no_traceback(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = tmp_path / "store"
    store.mkdir()
    with private_nats(store) as (port, procs), caplog.at_level(logging.INFO):
        url, _ = shared_url(lease=5, port=port)
        with App("restart", broker=url) as app:

            @app.task
            def echo(x: int) -> int:
                return x

            with app.worker(concurrency=2):
                assert echo.delay(1).get(timeout=10) == 1
                caplog.clear()
                stop(procs[0])
                time.sleep(0.5)  # down for a while: reconnect attempts fail meanwhile
                procs.append(start_nats(port, store))
                assert echo.delay(2).get(timeout=20) == 2
        # Closing on purpose is not a disconnect worth a line.
        records = list(caplog.records)
    assert [r for r in records if r.exc_info or r.levelno >= logging.ERROR] == []
    lines = [r.getMessage() for r in records if r.name == "taskflow.brokers.nats"]
    # One connection for the broker and one for the result store.
    down = [m for m in lines if "disconnected" in m]
    up = [m for m in lines if m.endswith("reconnected")]
    assert len(down) == len(up) == 2, lines
    assert len(lines) == 4, lines
    # The server going away reads as an end of stream, or as a reset if it had unread data.
    causes = ("unexpected EOF", "Connection reset by peer")
    assert all(any(c in m for c in causes) and f"127.0.0.1:{port}" in m for m in down), down
    assert not any(r.levelno == logging.WARNING and r.name.startswith("nats") for r in records)
