"""The contract suites' broker fixtures, for the limiter contract: one broker per backend
that can share a limit (memory, redis, nats, sqlite). RabbitMQ cannot (AMQP has no
shared counter with expiry); ``tests/amqp`` checks that a worker says so at start."""

import pytest

from tests.contract.conftest import BROKERS, loop, make_broker

__all__ = ["broker_backend", "loop", "make_broker"]

WITHOUT_LIMITER = {"amqp"}


@pytest.fixture(params=sorted(set(BROKERS) - WITHOUT_LIMITER))
def broker_backend(request: pytest.FixtureRequest) -> str:
    """The name of the broker backend under test."""
    return str(request.param)
