"""Fixtures of the operator-command tests: an app on a SQLite file, Redis or NATS (a fresh
prefix each), and a runner that invokes ``taskflow`` commands against it in-process."""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from taskflow import App
from taskflow.cli.main import cli
from tests.cli_ops.apps.opsapp import build
from tests.integration import nats_helpers, redis_helpers

APP_MODULE = "tests.cli_ops.apps.opsapp"


@dataclass
class Ops:
    """Runs ``taskflow`` commands against one backend (``url``), as an operator would."""

    url: str
    monkeypatch: pytest.MonkeyPatch
    apps: list[App] = field(default_factory=list)

    def run(self, *args: str, input: str | None = None) -> Result:  # noqa: A002 -- click's name
        """``taskflow ARGS`` with ``TASKFLOW_APP`` naming the test app on ``url``."""
        self.monkeypatch.setenv("TASKFLOW_BROKER_URL", self.url)
        self.monkeypatch.setenv("TASKFLOW_APP", APP_MODULE)
        self.monkeypatch.setenv("COLUMNS", "80")
        # The command imports the module afresh, so it builds its app on this test's URL.
        sys.modules.pop(APP_MODULE, None)
        return CliRunner().invoke(cli, list(args), input=input, catch_exceptions=False)

    def app(self) -> App:
        """The test's own instance of the app (a producer, or an in-process worker)."""
        application = build(self.url)
        self.apps.append(application)
        return application


def _ops(url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Ops]:
    ops = Ops(url, monkeypatch)
    try:
        yield ops
    finally:
        for application in ops.apps:
            application.close()
        sys.modules.pop(APP_MODULE, None)


@pytest.fixture
def sqlite_ops(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Ops]:
    """Commands against an app on a fresh SQLite file."""
    yield from _ops(f"sqlite:///{tmp_path / 'ops.db'}", monkeypatch)


@pytest.fixture
def redis_ops(monkeypatch: pytest.MonkeyPatch) -> Iterator[Ops]:
    """Commands against an app on the shared Redis server, under a fresh prefix."""
    url, prefix = redis_helpers.shared_url(lease=30)
    try:
        yield from _ops(url, monkeypatch)
    finally:
        redis_helpers.drop_prefix(url, prefix)


@pytest.fixture
def nats_ops(monkeypatch: pytest.MonkeyPatch) -> Iterator[Ops]:
    """Commands against an app on the shared NATS server, under a fresh prefix."""
    url, prefix = nats_helpers.shared_url(lease=30)
    try:
        yield from _ops(url, monkeypatch)
    finally:
        nats_helpers.drop_prefix(url, prefix)


@pytest.fixture(params=["sqlite", "redis", "nats"])
def ops(request: pytest.FixtureRequest) -> Ops:
    """Commands against each backend in turn."""
    fixture: Ops = request.getfixturevalue(f"{request.param}_ops")
    return fixture


def unique(name: str) -> str:
    """A name no other test uses."""
    return f"{name}-{uuid.uuid4().hex[:8]}"
