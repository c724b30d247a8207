"""Backends for the contract suites.

Every broker and result store runs the same tests. A backend is a factory registered in
``BROKERS`` / ``STORES`` by a ``backend_<name>.py`` module in this folder (memory here;
redis, nats and sqlite in their own modules; redis and nats skip loudly -- or fail in
CI -- when their server is down).

Plugging in a backend: ``tests/contract/backend_<name>.py`` defines
``register(brokers, stores)`` which adds

* ``brokers["<name>"] = factory`` with ``async factory(clock, lease) -> Broker``: a new,
  *unconnected* broker. ``clock`` is always ``None`` in the contract suites (they run on
  real time so that real servers pass them too); ``lease`` is the lease in seconds.
* ``stores["<name>"] = factory`` with ``async factory(clock) -> ResultStore`` (unconnected).

The fixtures connect what the factory returns, hand it to the test and ``await close()``
it afterwards, exactly once per object (the test may have closed it already: close is
idempotent). Cleanup is the object's own business: a backend on a shared server should use a
unique key prefix per factory call and purge that prefix in ``close`` (for example by
returning a small subclass). A factory that cannot reach its server calls
``tests.conftest.require_service`` (skip locally, fail in CI).

Fixtures: ``broker`` (lease 30 s), ``make_broker(lease=...)`` for more brokers or short
leases, ``store``, and ``queue`` (a fresh queue name per test). Each runs once per
registered backend, so test ids read ``test_name[memory]``, ``test_name[redis]``, ...
"""

from __future__ import annotations

import asyncio
import importlib
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, Protocol

import pytest

from taskflow.brokers.base import Broker
from taskflow.brokers.memory import MemoryBroker
from taskflow.clock import Clock, FakeClock
from taskflow.kernel.loop import new_event_loop
from taskflow.results.base import ResultStore
from taskflow.results.memory import MemoryResultStore

# name -> factory(clock, lease) returning an unconnected broker; the fixture connects,
# yields, purges (if the factory module provides cleanup) and closes.
BrokerFactory = Callable[[Clock | None, float], Awaitable[Broker]]
StoreFactory = Callable[[Clock | None], Awaitable[ResultStore]]

BROKERS: dict[str, BrokerFactory] = {}
STORES: dict[str, StoreFactory] = {}


async def _memory_broker(clock: Clock | None, lease: float) -> Broker:
    return MemoryBroker(lease=lease, clock=clock)


async def _memory_store(clock: Clock | None) -> ResultStore:
    return MemoryResultStore(clock=clock)


BROKERS["memory"] = _memory_broker
STORES["memory"] = _memory_store

for _name in ("redis", "nats", "sqlite", "amqp"):
    try:
        importlib.import_module(f"tests.contract.backend_{_name}").register(BROKERS, STORES)
    except ModuleNotFoundError as exc:
        if exc.name != f"tests.contract.backend_{_name}":
            raise


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    """A fresh event loop per test (closed after), of the kind an app's loop would be:
    uvloop's unless ``TASKFLOW_LOOP=asyncio`` (CI runs the suite both ways)."""
    lp = new_event_loop()
    yield lp
    lp.run_until_complete(lp.shutdown_asyncgens())
    lp.run_until_complete(lp.shutdown_default_executor())
    lp.close()


def run(loop: asyncio.AbstractEventLoop, coro: Awaitable[Any]) -> Any:
    """Run a coroutine on the test's loop with a hard bound."""
    return loop.run_until_complete(asyncio.wait_for(coro, 60))


class MakeBroker(Protocol):
    """Builds and connects one more broker of the backend under test."""

    def __call__(self, lease: float = 30.0) -> Broker: ...


@pytest.fixture(params=sorted(BROKERS))
def broker_backend(request: pytest.FixtureRequest) -> str:
    """The name of the broker backend under test."""
    return str(request.param)


@pytest.fixture
def make_broker(loop: asyncio.AbstractEventLoop, broker_backend: str) -> Iterator[MakeBroker]:
    """Call (outside the loop) to get a connected broker; all are closed after the test."""
    made: list[Broker] = []

    def make(lease: float = 30.0) -> Broker:
        broker: Broker = run(loop, BROKERS[broker_backend](None, lease))
        made.append(broker)
        run(loop, broker.connect())
        return broker

    yield make
    for broker in reversed(made):
        run(loop, broker.close())


@pytest.fixture
def broker(make_broker: MakeBroker) -> Broker:
    """A connected broker with a 30 s lease."""
    return make_broker()


@pytest.fixture(params=sorted(STORES))
def store(request: pytest.FixtureRequest, loop: asyncio.AbstractEventLoop) -> Iterator[ResultStore]:
    """A connected result store of each registered backend, closed after the test."""
    result_store: ResultStore = run(loop, STORES[str(request.param)](None))
    try:
        run(loop, result_store.connect())
        yield result_store
    finally:
        run(loop, result_store.close())


@pytest.fixture
def queue() -> str:
    """A queue name no other test uses."""
    return f"q-{uuid.uuid4().hex[:10]}"


__all__ = ["BROKERS", "STORES", "MakeBroker", "run"]


@pytest.fixture(params=sorted(STORES))
def timed(
    request: pytest.FixtureRequest, loop: asyncio.AbstractEventLoop
) -> Iterator[tuple[ResultStore, FakeClock]]:
    """A connected store of each backend on a fake clock, with that clock."""
    clock = FakeClock()
    store: ResultStore = run(loop, STORES[str(request.param)](clock))
    try:
        run(loop, store.connect())
        yield store, clock
    finally:
        run(loop, store.close())
