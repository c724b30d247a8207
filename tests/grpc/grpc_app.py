"""The app of the gRPC tests, loaded by ``taskflow grpc -A`` and ``taskflow worker -A`` in
subprocesses; ``TASKFLOW_BROKER_URL`` carries the server and the test's own prefix."""

from __future__ import annotations

import os

from google.protobuf.timestamp_pb2 import Timestamp

from taskflow import App, TaskContext

app = App("grpcit", broker=os.environ.get("TASKFLOW_BROKER_URL", "redis://127.0.0.1:6379/0"))


@app.task(name="g.add")
def add(x: int, y: int) -> int:
    """Add two numbers."""
    return x + y


@app.task(name="g.seconds")
def seconds(at: Timestamp) -> int:
    """The seconds of a protobuf timestamp (it arrives as the message class)."""
    assert isinstance(at, Timestamp)
    return at.seconds


@app.task(name="g.echo")
def echo(text: str) -> str:
    """Return the text (large texts make large events)."""
    return text


@app.task(name="g.headers", bind=True)
def headers(ctx: TaskContext) -> dict[str, str]:
    """The headers the task was sent with."""
    return dict(ctx.headers)
