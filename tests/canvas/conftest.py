"""Canvas fixtures: an App per backend pair registered for the contract suites.

``backend_app`` runs once per backend that has both a broker and a result store in
``tests.contract.conftest`` (memory always; redis and nats once their modules register),
each on its own key prefix / streams, cleaned up when the App closes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from taskflow import App
from taskflow.brokers.base import Broker
from taskflow.results.base import ResultStore
from tests.contract.conftest import BROKERS, STORES

BACKENDS = sorted(set(BROKERS) & set(STORES))


def make_app(backend: str, name: str = "canvas", lease: float = 30.0) -> App:
    """An App on fresh, unconnected ``backend`` objects (it connects them on first use)."""

    # The factories only construct; clients are created later, on the App's own loop.
    async def build() -> tuple[Broker, ResultStore]:
        return await BROKERS[backend](None, lease), await STORES[backend](None)

    broker, store = asyncio.run(build())
    return App(name, broker=broker, results=store)


@pytest.fixture(params=BACKENDS)
def backend_app(request: pytest.FixtureRequest) -> Iterator[App]:
    """An App on each registered backend, closed (and its keys removed) after the test."""
    application = make_app(str(request.param))
    try:
        yield application
    finally:
        application.close()
