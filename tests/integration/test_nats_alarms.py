"""``app.admin.alarms()`` on NATS: an account whose JetStream storage nears its limit is
named before the server refuses tasks (a private nats-server whose account has limits)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from taskflow import App
from taskflow.errors import BrokerError

from .nats_helpers import NATS_SERVER, _listening, free_port, stop, wait_until

pytestmark = pytest.mark.integration

PASSWORD = "hunter2-js"
LIMIT = 1024 * 1024  # the account's JetStream file storage


@pytest.fixture
def limited(tmp_path: Path) -> Iterator[int]:
    """A nats-server whose one account may store :data:`LIMIT` bytes; yields its port."""
    if not Path(NATS_SERVER).exists():
        pytest.skip(f"{NATS_SERVER} is not installed")
    port = free_port()
    conf = tmp_path / "nats.conf"
    conf.write_text(
        f'listen: 127.0.0.1:{port}\njetstream {{ store_dir: "{tmp_path / "js"}" }}\n'
        f"accounts {{ TF: {{ jetstream: {{ max_file: {LIMIT}, max_mem: {LIMIT} }}, "
        f'users: [{{ user: tf, password: "{PASSWORD}" }}] }} }}\n'
    )
    proc = subprocess.Popen(
        [NATS_SERVER, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_until(lambda: _listening(port), 10, f"nats-server on port {port}")
        yield port
    finally:
        stop(proc)


def test_storage_near_the_accounts_limit_is_an_alarm(limited: int) -> None:
    url = f"nats://tf:{PASSWORD}@127.0.0.1:{limited}?prefix=tfalarm"
    with App("alarms", broker=url) as app:

        @app.task(name="alarms.carry", store_result=False)
        def carry(blob: str) -> None:
            pass

        carry.delay("")
        assert app.admin.alarms() == []
        blob = "x" * 20_000
        refused = None
        for _ in range(200):  # about 4 MB: more than the account may store
            if app.admin.alarms():
                break
            try:
                carry.delay(blob)
            except BrokerError as exc:
                refused = exc
                break
        [alarm] = app.admin.alarms()
        assert refused is None, "the server refused tasks before the alarm showed"
        assert alarm.startswith("nats at nats://tf:***@127.0.0.1:")
        assert "of the account's JetStream file storage in use" in alarm
        assert f"of {LIMIT:,} bytes" in alarm and "refuses new tasks" in alarm
        assert PASSWORD not in alarm
        [again] = app.admin.stats().alarms  # the stored bytes move (the KV's own entries)
        assert "of the account's JetStream file storage in use" in again
