"""Helpers for the NATS integration tests: worker subprocesses and private servers."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import nats
import pytest

from tests.conftest import require_service

ROOT = Path(__file__).resolve().parents[2]
APP_SPEC = "tests.integration.nats_worker_app:app"
NATS_SERVER = "/usr/sbin/nats-server"


def shared_url(lease: float, port: int = 4222) -> tuple[str, str]:
    """A URL with a fresh prefix (its own streams and buckets), and that prefix."""
    require_service("nats", "127.0.0.1", port)
    prefix = f"tfit{uuid.uuid4().hex[:10]}"
    return f"nats://127.0.0.1:{port}?prefix={prefix}&lease={lease}", prefix


def drop_prefix(url: str, prefix: str) -> None:
    """Delete every stream and bucket of ``prefix``."""

    async def drop() -> None:
        nc = await nats.connect(url.split("?", 1)[0], connect_timeout=2)
        try:
            js = nc.jetstream()
            for name in ("WORK", "DELAY", "DLQ"):
                with contextlib.suppress(Exception):
                    await js.delete_stream(f"TF_{prefix}_{name}")
            for bucket in ("STATE", "RESULTS"):
                with contextlib.suppress(Exception):
                    await js.delete_stream(f"KV_TF_{prefix}_{bucket}")
        finally:
            await nc.close()

    asyncio.run(drop())


def runs(runs_dir: Path, task_id: str) -> list[int]:
    """Pids of the processes that ran ``task_id`` (in order)."""
    path = runs_dir / task_id
    if not path.exists():
        return []
    return [int(line) for line in path.read_text().split()]


def start_worker(url: str, runs_dir: Path, concurrency: int = 2) -> subprocess.Popen[bytes]:
    """``taskflow worker`` for the integration app, in its own process."""
    env = {
        **os.environ,
        "TASKFLOW_BROKER_URL": url,
        "PYTHONPATH": str(ROOT),
        "TF_RUNS_DIR": str(runs_dir),
    }
    command = [
        sys.executable,
        "-m",
        "taskflow.cli.main",
        "worker",
        "-A",
        APP_SPEC,
        "-c",
        str(concurrency),
        "--loglevel",
        "warning",
    ]
    return subprocess.Popen(command, cwd=ROOT, env=env)


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    """Stop a process (SIGKILL if it does not go within 20 s)."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def wait_until(predicate: object, timeout: float, what: str) -> None:
    """Poll ``predicate`` (a callable) every 50 ms until true; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.05)
    pytest.fail(f"timed out after {timeout}s waiting for {what}")


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def start_nats(port: int, store_dir: Path) -> subprocess.Popen[bytes]:
    """A nats-server with JetStream on ``port`` storing in ``store_dir``; waits until up."""
    if not Path(NATS_SERVER).exists():
        pytest.skip(f"{NATS_SERVER} is not installed")
    proc = subprocess.Popen(
        [NATS_SERVER, "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", str(store_dir)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_until(lambda: _listening(port), 10, f"nats-server on port {port}")
    return proc


@contextmanager
def private_nats(store_dir: Path) -> Iterator[tuple[int, list[subprocess.Popen[bytes]]]]:
    """A nats-server of our own (so we may restart it); yields (port, [process])."""
    port = free_port()
    procs = [start_nats(port, store_dir)]
    try:
        yield port, procs
    finally:
        for proc in procs:
            stop(proc)
