"""The RabbitMQ tests' shared fixture."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from tests.amqp import amqp_helpers as h
from tests.contract.backend_amqp import delete_topology


@pytest.fixture
def prefix() -> Iterator[str]:
    """A fresh topology prefix (RabbitMQ required); its queue ``q`` is deleted after."""
    h.require_service("rabbitmq", "127.0.0.1", 5672)
    name = f"tfamqp{uuid.uuid4().hex[:10]}"
    yield name
    delete_topology(name, {"q"})
