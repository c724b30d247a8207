"""Calls to a NATS server that stopped answering: ``get(timeout=...)`` keeps its timeout,
and an operator action raises an error that says what happened.

Before, the wait for a result first read the record with the client's own 5-second bound, so a
``get(timeout=1)`` raised ``BrokerError`` after 5 seconds. The app connects through a proxy
that stops relaying while keeping every connection open (``tests/frozen_proxy.py``).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from taskflow import App, Task
from taskflow.errors import BrokerError, ResultTimeout
from tests.frozen_proxy import FrozenProxy, app_through, frozen_proxy, noop_of
from tests.integration.nats_helpers import drop_prefix, shared_url

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
def prefix() -> Iterator[str]:
    url, name = shared_url(lease=30.0)
    yield name
    drop_prefix(url, name)


@pytest.fixture
def proxy() -> Iterator[FrozenProxy]:
    with frozen_proxy(("127.0.0.1", 4222)) as running:
        yield running


@pytest.fixture
def app(prefix: str, proxy: FrozenProxy) -> Iterator[App]:
    """An app on the shared NATS server through ``proxy``; closed after the test."""
    with app_through("hung-nats", f"nats://127.0.0.1:{proxy.port}?prefix={prefix}") as hung:
        yield hung


@pytest.fixture
def noop(app: App) -> Task[[], None]:
    """A task of ``app`` that does nothing (no worker runs it: what it sends stays)."""
    return noop_of(app)


def test_get_on_a_hung_nats_server_raises_result_timeout_at_its_timeout(
    proxy: FrozenProxy, noop: Task[[], None]
) -> None:
    result = noop.delay()  # no worker: it stays queued
    proxy.freeze()
    started = time.monotonic()
    with pytest.raises(ResultTimeout):
        result.get(timeout=1.0)
    took = time.monotonic() - started
    assert took < 2.0


def test_operator_actions_on_a_hung_nats_server_say_it_stopped_answering(
    prefix: str, app: App, proxy: FrozenProxy, noop: Task[[], None]
) -> None:
    noop.delay()
    assert [q.name for q in app.admin.queues()] == ["default"]
    proxy.freeze()
    started = time.monotonic()
    with pytest.raises(BrokerError) as caught:
        app.admin.purge("default")
    took = time.monotonic() - started
    # Before: "NATS nats://...: TimeoutError: " (an empty message after the type).
    assert str(caught.value) == (
        f"NATS nats://127.0.0.1:{proxy.port}?prefix={prefix}: no reply in time (the server "
        "stopped answering)"
    )
    assert took < 7.0  # the client's API timeout (5 s)
