"""Fixtures of the gRPC tests: a prefix on the real Redis or NATS server, a ``taskflow grpc``
process and a ``taskflow worker`` process for it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.grpc.helpers import Server, backend_url, drop_backend, start_server, start_worker, stop


@pytest.fixture(params=["redis", "nats"])
def url(request: pytest.FixtureRequest) -> Iterator[str]:
    """A broker URL with the test's own prefix, on Redis and on NATS."""
    value, prefix = backend_url(request.param)
    yield value
    drop_backend(request.param, value, prefix)


@pytest.fixture
def redis_url() -> Iterator[str]:
    """A Redis URL with the test's own prefix (tests that need one backend only)."""
    value, prefix = backend_url("redis")
    yield value
    drop_backend("redis", value, prefix)


@pytest.fixture
def server(url: str, tmp_path: Path) -> Iterator[Server]:
    """``taskflow grpc --insecure-no-auth`` on ``url``."""
    running = start_server(url, tmp_path / "grpc.log")
    yield running
    stop(running.proc)


@pytest.fixture
def worker(url: str) -> Iterator[None]:
    """A worker process on ``url``."""
    proc = start_worker(url)
    yield
    stop(proc)
