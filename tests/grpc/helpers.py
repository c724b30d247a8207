"""Processes and clients of the gRPC tests: ``taskflow grpc`` and ``taskflow worker`` for
``tests.grpc.grpc_app`` on a real Redis or NATS server, each test on its own prefix."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from taskflow.grpc import pb, pb_grpc
from tests.conftest import require_service
from tests.integration import nats_helpers, redis_helpers
from tests.integration.redis_helpers import wait_until

ROOT = Path(__file__).resolve().parents[2]
APP_SPEC = "tests.grpc.grpc_app:app"
WORKER_QUEUES = "default,q2"
"""The queues the test workers consume."""
_LISTENING = re.compile(r"taskflow grpc: listening on (\S+):(\d+)")


def backend_url(backend: str) -> tuple[str, str]:
    """A URL of the shared ``backend`` server with a fresh prefix, and that prefix."""
    prefix = f"tfgrpc{uuid.uuid4().hex[:10]}"
    if backend == "redis":
        require_service("redis", "127.0.0.1", 6379)
        return f"redis://127.0.0.1:6379/0?prefix={prefix}", prefix
    require_service("nats", "127.0.0.1", 4222)
    return f"nats://127.0.0.1:4222?prefix={prefix}", prefix


def drop_backend(backend: str, url: str, prefix: str) -> None:
    """Delete what the test created on the server."""
    if backend == "redis":
        redis_helpers.drop_prefix(url, prefix)
    else:
        nats_helpers.drop_prefix(url, prefix)


def process_env(url: str) -> dict[str, str]:
    return {**os.environ, "TASKFLOW_BROKER_URL": url, "PYTHONPATH": str(ROOT)}


def taskflow_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "taskflow.cli.main", *args]


@dataclass
class Server:
    """A running ``taskflow grpc`` process."""

    proc: subprocess.Popen[bytes]
    log: Path
    port: int = 0
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def start_server(url: str, log: Path, args: Sequence[str] = ("--insecure-no-auth",)) -> Server:
    """``taskflow grpc --port 0 ARGS`` for the test app; returns once it listens."""
    out = log.open("wb")
    proc = subprocess.Popen(
        taskflow_command("grpc", "-A", APP_SPEC, "--port", "0", *args),
        cwd=ROOT,
        env=process_env(url),
        stdout=out,
        stderr=subprocess.STDOUT,
    )
    out.close()
    server = Server(proc, log)

    def listening() -> bool:
        assert proc.poll() is None, f"taskflow grpc exited: {server.output()}"
        found = _LISTENING.search(server.output())
        if found:
            server.port = int(found.group(2))
        return found is not None

    wait_until(listening, 30, "taskflow grpc to listen")
    return server


def start_worker(url: str, concurrency: int = 4) -> subprocess.Popen[bytes]:
    """``taskflow worker`` for the test app, in its own process."""
    return subprocess.Popen(
        taskflow_command(
            "worker",
            "-A",
            APP_SPEC,
            "-Q",
            WORKER_QUEUES,
            "-c",
            str(concurrency),
            "--loglevel",
            "warning",
        ),
        cwd=ROOT,
        env=process_env(url),
    )


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> int:
    """Stop a process; its exit status (SIGKILL if it does not go within 20 s)."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    return proc.returncode


@contextmanager
def stub(
    target: str,
    credentials: grpc.ChannelCredentials | None = None,
    options: Sequence[tuple[str, object]] = (),
) -> Iterator[pb_grpc.WorkerServiceStub]:
    """A WorkerService client on its own channel (connection)."""
    if credentials is None:
        channel = grpc.insecure_channel(target, options=list(options))
    else:
        channel = grpc.secure_channel(target, credentials, options=list(options))
    try:
        yield pb_grpc.WorkerServiceStub(channel)
    finally:
        channel.close()


def json_args(*values: str) -> list[pb.Argument]:
    """Arguments given as JSON texts."""
    return [pb.Argument(json=value) for value in values]


def add(x: int, y: int, **fields: object) -> pb.TaskRequest:
    """A ``g.add`` request."""
    return pb.TaskRequest(task="g.add", args=json_args(str(x), str(y)), **fields)  # type: ignore[arg-type]


def enqueue(client: pb_grpc.WorkerServiceStub, *tasks: pb.TaskRequest, **call: object) -> list[str]:
    """Send ``tasks``; their ids."""
    response = client.EnqueueTasks(pb.EnqueueTasksRequest(tasks=tasks), **call)  # type: ignore[arg-type]
    return list(response.ids)


def error_of(call: object) -> grpc.RpcError:
    """The RpcError a call (a zero-argument callable) raises."""
    try:
        call()  # type: ignore[operator]
    except grpc.RpcError as exc:
        return exc
    raise AssertionError("the call succeeded")
