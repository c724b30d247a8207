"""The admin service over an app on each networked broker: the same reads, changes and
dead-letter actions as on SQLite (``test_api``), through the API. On Redis and NATS the
records live with the broker; on RabbitMQ in Redis. RabbitMQ cannot list its queues: the
service shows those the app names and its workers listen on."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from starlette.testclient import TestClient

from taskflow import App
from tests.amqp import amqp_helpers as amqp
from tests.integration import nats_helpers as nats
from tests.integration import redis_helpers as redis

from . import test_api as api
from .conftest import Seeded

pytestmark = pytest.mark.integration

with_schedule = api.with_schedule  # a fixture of test_api's, used here too


@pytest.fixture(params=["redis", "nats", "amqp"])
def admin_app(request: pytest.FixtureRequest) -> Iterator[App]:
    """An app on the broker, under a prefix of its own (dropped after)."""
    if request.param == "amqp":
        broker, results, prefix = amqp.shared_urls(lease=30)
        app = App(f"adm{prefix[-6:]}", broker=broker, results=results)
    else:  # the records live with the broker
        helpers = redis if request.param == "redis" else nats
        broker, prefix = helpers.shared_url(lease=30)
        app = App(f"adm{prefix[-6:]}", broker=broker)
    try:
        yield app
    finally:
        queues = {app.registry[name].options.queue for name in app.registry} | {"default"}
        app.close()
        if request.param == "amqp":
            amqp.drop(prefix, queues)  # queues: RabbitMQ cannot list a prefix's own
        else:
            helpers.drop_prefix(broker, prefix)


def test_every_read_endpoint_answers(client: TestClient, seeded: Seeded) -> None:
    api.test_every_read_endpoint_answers_a_valid_token(client, seeded)


@pytest.mark.usefixtures("with_schedule")
def test_every_change_endpoint_works(client: TestClient, seeded: Seeded, admin_app: App) -> None:
    api.test_every_change_endpoint_works_and_is_audited_with_the_caller(client, seeded, admin_app)


def test_dead_letter_actions_follow_their_filters(
    client: TestClient, seeded: Seeded, admin_app: App
) -> None:
    api.test_dead_letter_actions_follow_their_filters(client, seeded, admin_app)
