"""Beat fixtures: apps that share one in-memory broker and result store on a fake clock,
as separate beat processes share one Redis."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from taskflow import App, FakeClock
from taskflow.brokers import MemoryBroker
from taskflow.codec import decode_envelope
from taskflow.results import MemoryResultStore

START = 1_699_999_200.0  # a whole UTC hour: lease epochs and intervals line up with it

AppFactory = Callable[[], App]


@pytest.fixture
def clock() -> FakeClock:
    """A clock that moves only when the test says so."""
    return FakeClock(START)


@pytest.fixture
def make_app(clock: FakeClock) -> Iterator[AppFactory]:
    """Build apps named "shop" on one shared broker and store (one per "process")."""
    broker = MemoryBroker(clock=clock)
    results = MemoryResultStore(clock=clock)
    apps: list[App] = []

    def make() -> App:
        application = App("shop", broker=broker, results=results, clock=clock)
        apps.append(application)
        return application

    yield make
    for application in apps:
        application.close()


def queued_ids(app: App, queue: str = "default") -> list[str]:
    """Ids of the messages waiting in ``queue``, in delivery order."""
    assert isinstance(app.broker, MemoryBroker)
    bodies = app.kernel.call(app.broker.peek(queue, 10_000))
    return [decode_envelope(body).id for body in bodies]
