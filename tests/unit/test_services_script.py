"""scripts/services.sh: starts what is down, leaves what answers, says which, fails loudly.

Runs the real script against real redis-server / nats-server binaries on free ports, so
the servers the rest of the suite uses are never touched.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "services.sh"


def binary(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    sbin = Path("/usr/sbin") / name
    return str(sbin) if os.access(sbin, os.X_OK) else None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run(state: Path, *services: str, **ports: int) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "TASKFLOW_SERVICES_DIR": str(state),
        "TASKFLOW_SERVICES_WAIT": "5",
        **{f"TASKFLOW_{name.upper()}_PORT": str(port) for name, port in ports.items()},
    }
    return subprocess.run(
        ["bash", str(SCRIPT), *services],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


@pytest.fixture
def state(tmp_path: Path) -> Iterator[Path]:
    """The script's state directory; servers it started (pid files) are stopped after."""
    yield tmp_path
    for pidfile in tmp_path.glob("*.pid"):
        text = pidfile.read_text().strip()
        if text.isdigit():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(text), signal.SIGTERM)


@pytest.mark.skipif(
    binary("redis-server") is None or binary("nats-server") is None,
    reason="redis-server and nats-server must be installed to test starting them",
)
def test_starts_what_is_down_then_finds_it_running(state: Path) -> None:
    redis_port, nats_port = free_port(), free_port()

    first = run(state, "redis", "nats", redis=redis_port, nats=nats_port)

    assert first.returncode == 0, first.stdout + first.stderr
    lines = first.stdout.splitlines()
    assert len(lines) == 2, first.stdout
    assert lines[0].startswith(f"redis 127.0.0.1:{redis_port}: started ("), lines
    assert lines[1].startswith(f"nats 127.0.0.1:{nats_port}: started ("), lines
    for port in (redis_port, nats_port):
        socket.create_connection(("127.0.0.1", port), timeout=1.0).close()

    again = run(state, "redis", "nats", redis=redis_port, nats=nats_port)

    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout.splitlines() == [
        f"redis 127.0.0.1:{redis_port}: already running",
        f"nats 127.0.0.1:{nats_port}: already running",
    ]


@pytest.mark.skipif(binary("redis-server") is None, reason="redis-server is not installed")
def test_only_the_named_services_and_a_failure_exits_non_zero(state: Path) -> None:
    # A port no server can listen on: redis-server refuses to start.
    proc = run(state, "redis", redis=70000)

    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert proc.stdout.splitlines() == [
        f"redis 127.0.0.1:70000: FAILED: redis-server did not start (see {state}/redis.log)"
    ]


def test_an_unknown_service_is_named(state: Path) -> None:
    proc = run(state, "kafka")

    assert proc.returncode == 2
    assert proc.stdout == ""
    assert "unknown service 'kafka' (known: redis nats rabbitmq)" in proc.stderr


def test_a_rabbitmq_that_answers_is_left_alone(state: Path) -> None:
    with socket.socket() as server:  # anything answering on the port counts as running
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = int(server.getsockname()[1])
        proc = run(state, "rabbitmq", rabbitmq=port)

    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.splitlines() == [f"rabbitmq 127.0.0.1:{port}: already running"]
