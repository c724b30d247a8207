"""An App per registered backend (memory, and redis/nats once their modules register)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from taskflow import App
from taskflow.brokers.base import Broker
from taskflow.results.base import ResultStore
from tests.contract.conftest import BROKERS, STORES


@pytest.fixture(params=sorted(BROKERS))
def backend_app(request: pytest.FixtureRequest) -> Iterator[App]:
    """An App on one backend: its broker, and its result store (memory if it has none)."""
    name = str(request.param)

    async def build() -> tuple[Broker, ResultStore]:
        # Unconnected: the App connects them on its own loop at first use.
        store_factory = STORES.get(name, STORES["memory"])
        return await BROKERS[name](None, 30.0), await store_factory(None)

    broker, store = asyncio.run(build())
    app = App(f"typed-{name}", broker=broker, results=store)
    yield app
    app.close()
