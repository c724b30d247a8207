"""Helpers for the RabbitMQ tests: URLs under a fresh prefix, messages for queue ``q``,
worker subprocesses, and ``rabbitmqctl`` to close a process's connections."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import redis

from taskflow.brokers.base import Message
from tests.conftest import require_service
from tests.contract.backend_amqp import delete_topology

ROOT = Path(__file__).resolve().parents[2]
APP_SPEC = "tests.amqp.amqp_worker_app:app"
AMQP = "amqp://guest:guest@127.0.0.1:5672"
REDIS = "redis://127.0.0.1:6379/0"


def msg(body: bytes = b"x") -> Message:
    """A message for queue ``q`` under a fresh id."""
    return Message(id=uuid.uuid4().hex, queue="q", body=body, max_deliveries=5)


def shared_urls(lease: float = 30.0) -> tuple[str, str, str]:
    """(broker URL, results URL, prefix) on the shared servers under a fresh prefix."""
    require_service("rabbitmq", "127.0.0.1", 5672)
    require_service("redis", "127.0.0.1", 6379)
    prefix = f"tfamqp{uuid.uuid4().hex[:10]}"
    return f"{AMQP}?prefix={prefix}&lease={lease}", f"{REDIS}?prefix={prefix}", prefix


def drop(prefix: str, queues: set[str]) -> None:
    """Delete the RabbitMQ topology and the Redis keys of ``prefix``."""
    delete_topology(prefix, queues)
    client = redis.Redis.from_url(REDIS)
    try:
        for pattern in (f"{{{prefix}}}:*", f"{prefix}:*"):
            for key in client.scan_iter(match=pattern, count=1000):
                client.delete(key)
    finally:
        client.close()


def runs(prefix: str, task_id: str) -> list[int]:
    """Pids of the processes that ran ``task_id``, in order."""
    client = redis.Redis.from_url(REDIS)
    try:
        return [int(x) for x in client.lrange(f"{prefix}:runs:{task_id}", 0, -1)]
    finally:
        client.close()


def start_worker(broker: str, results: str, concurrency: int = 2) -> subprocess.Popen[bytes]:
    """``taskflow worker`` for the test app, in its own process."""
    env = {
        **os.environ,
        "TASKFLOW_BROKER_URL": broker,
        "TASKFLOW_RESULTS_URL": results,
        "PYTHONPATH": str(ROOT),
    }
    command = [sys.executable, "-m", "taskflow.cli.main", "worker", "-A", APP_SPEC]
    command += ["-c", str(concurrency), "--loglevel", "warning"]
    return subprocess.Popen(command, cwd=ROOT, env=env)


def rabbitmqctl(*args: str) -> str:
    """Run ``rabbitmqctl`` (skips the test where it cannot be used)."""
    binary = shutil.which("rabbitmqctl")
    if binary is None:
        pytest.skip("rabbitmqctl is not installed")
    done = subprocess.run(
        [binary, "-q", *args], capture_output=True, text=True, timeout=60, check=False
    )
    if done.returncode != 0:
        pytest.skip(f"rabbitmqctl {args[0]} failed (needs root): {done.stderr.strip()}")
    return done.stdout


def connections_of(prefix: str, pid: int) -> list[str]:
    """The RabbitMQ connection pids of process ``pid`` on ``prefix`` (by connection name)."""
    name = f'{{"connection_name","taskflow {prefix} pid {pid}"}}'
    out = rabbitmqctl("list_connections", "--no-table-headers", "pid", "client_properties")
    return [line.split("\t", 1)[0] for line in out.splitlines() if name in line]


def close_connections(prefix: str, pid: int) -> int:
    """Close every connection of process ``pid``; how many."""
    found = connections_of(prefix, pid)
    for conn in found:
        rabbitmqctl("close_connection", conn, "closed by a taskflow test")
    return len(found)
