"""An app on an SQLite file with queues, finished tasks and dead letters, served by the
admin service through Starlette's TestClient, with one read-write and one read-only token."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from taskflow import App
from taskflow.admin import TokenStore, create_app
from taskflow.testing import drain

OPS = "ops-token-7f3a"
VIEWER = "viewer-token-91c2"
TOKEN_FILE = f"# admin tokens\nops:{OPS}\nviewer:{VIEWER}:read-only\n"


def auth(token: str) -> dict[str, str]:
    """The bearer header of ``token``."""
    return {"Authorization": f"Bearer {token}"}


class Seeded:
    """What the fixture put in the app: queue names and task ids."""

    def __init__(self, app: App) -> None:
        tag = uuid.uuid4().hex[:6]
        self.queue = f"work{tag}"
        self.other = f"mail{tag}"
        self.fail_name = f"fails.{tag}"

        @app.task(name=f"adds.{tag}", queue=self.queue)
        def add(x: int, y: int) -> int:
            return x + y

        @app.task(name=self.fail_name, queue=self.queue, retries=0)
        def fails(secret: str) -> None:
            raise ValueError("boom")

        @app.task(name=f"mails.{tag}", queue=self.other)
        def mail(to: str) -> str:
            return to

        self.add, self.fails, self.mail = add, fails, mail
        self.done = [add.delay(i, 1).id for i in range(3)]
        self.dead = [fails.delay(f"card-{i}").id for i in range(4)]
        drain(app, [self.queue])
        self.waiting = [mail.delay(f"user{i}@example.com").id for i in range(5)]


@pytest.fixture
def admin_app(tmp_path: Path) -> Iterator[App]:
    """An app on an SQLite file of its own."""
    app = App(f"adm{uuid.uuid4().hex[:6]}", broker=f"sqlite:///{tmp_path / 'admin.db'}")
    yield app
    app.close()


@pytest.fixture
def seeded(admin_app: App) -> Seeded:
    """Three finished tasks, four dead letters and five tasks waiting in another queue."""
    return Seeded(admin_app)


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    """A token file with a read-write and a read-only token."""
    path = tmp_path / "tokens"
    path.write_text(TOKEN_FILE)
    return path


@pytest.fixture
def client(admin_app: App, seeded: Seeded, token_file: Path) -> Iterator[TestClient]:
    """The admin service of the seeded app."""
    web = create_app(admin_app, tokens=TokenStore.from_file(token_file))
    with TestClient(web, base_url="http://127.0.0.1") as test_client:
        yield test_client


def error_of(response: Any) -> dict[str, Any]:
    """The error envelope's inner object, after checking its shape."""
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message", "request_id"}
    assert body["error"]["request_id"] == response.headers["X-Request-ID"]
    return dict(body["error"])
