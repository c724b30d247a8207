"""The app the Node example talks to: ``taskflow grpc -A examples.grpc.app`` serves it and
``taskflow worker -A examples.grpc.app`` runs its tasks (Redis on localhost by default)."""

from __future__ import annotations

import os

from taskflow import App

app = App("grpc-example", broker=os.environ.get("TASKFLOW_BROKER_URL", "redis://127.0.0.1:6379/0"))


@app.task(name="example.add")
def add(x: int, y: int) -> int:
    """Add two numbers."""
    return x + y


@app.task(name="example.greet")
def greet(name: str, punctuation: str = "!") -> str:
    """Greet someone."""
    return f"Hello, {name}{punctuation}"
