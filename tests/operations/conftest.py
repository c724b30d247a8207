"""One app factory per backend (memory, SQLite file, Redis prefix, NATS prefix) for the
operations API tests. ``new_app()`` makes another app on the same backend in a fresh
namespace (another prefix or file), for export/import round trips; all are closed and
their namespaces dropped afterwards."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from taskflow import App
from tests.integration import nats_helpers, redis_helpers

BACKENDS = ["memory", "sqlite", "redis", "nats"]

NewApp = Callable[[], App]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """The backend's name."""
    return str(request.param)


@pytest.fixture
def new_app(backend: str, tmp_path: Path) -> Iterator[NewApp]:
    """A factory of apps on ``backend``, each in its own namespace."""
    apps: list[App] = []
    cleanups: list[Callable[[], Any]] = []

    def make() -> App:
        name = f"ops-{uuid.uuid4().hex[:6]}"
        if backend == "memory":
            url = "memory://"
        elif backend == "sqlite":
            url = f"sqlite:///{tmp_path / (name + '.db')}"
        elif backend == "redis":
            url, prefix = redis_helpers.shared_url(lease=30)
            cleanups.append(lambda: redis_helpers.drop_prefix(url, prefix))
        else:
            url, prefix = nats_helpers.shared_url(lease=30)
            cleanups.append(lambda: nats_helpers.drop_prefix(url, prefix))
        application = App(name, broker=url, result_ttl=3600.0)
        apps.append(application)
        return application

    try:
        yield make
    finally:
        for application in apps:
            application.close()
        for cleanup in cleanups:
            cleanup()


@pytest.fixture
def app(new_app: NewApp) -> App:
    """An app on the backend under test."""
    return new_app()


@pytest.fixture
def queue() -> str:
    """A fresh queue name."""
    return f"q{uuid.uuid4().hex[:8]}"
