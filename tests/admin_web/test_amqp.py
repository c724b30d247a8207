"""The admin service over an app on RabbitMQ (results in Redis): the same reads, changes
and dead-letter actions as on SQLite (``test_api``), through the API. RabbitMQ cannot list
its queues: the service shows those the app names and its workers listen on."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from starlette.testclient import TestClient

from taskflow import App
from tests.amqp import amqp_helpers as h

from . import test_api as api
from .conftest import Seeded

pytestmark = pytest.mark.integration

with_schedule = api.with_schedule  # a fixture of test_api's, used here too


@pytest.fixture
def admin_app() -> Iterator[App]:
    """An app on RabbitMQ with its records in Redis, under a prefix of its own."""
    broker, results, prefix = h.shared_urls(lease=30)
    app = App(f"adm{prefix[-6:]}", broker=broker, results=results)
    try:
        yield app
    finally:
        queues = {app.registry[name].options.queue for name in app.registry} | {"default"}
        app.close()
        h.drop(prefix, queues)


def test_every_read_endpoint_answers_on_rabbitmq(client: TestClient, seeded: Seeded) -> None:
    api.test_every_read_endpoint_answers_a_valid_token(client, seeded)


@pytest.mark.usefixtures("with_schedule")
def test_every_change_endpoint_works_on_rabbitmq(
    client: TestClient, seeded: Seeded, admin_app: App
) -> None:
    api.test_every_change_endpoint_works_and_is_audited_with_the_caller(client, seeded, admin_app)


def test_dead_letter_actions_follow_their_filters_on_rabbitmq(
    client: TestClient, seeded: Seeded, admin_app: App
) -> None:
    api.test_dead_letter_actions_follow_their_filters(client, seeded, admin_app)
