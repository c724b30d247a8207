"""Calls to a Redis server that stopped answering end within their bounds.

The app connects through a proxy that stops relaying while keeping every connection open
(``tests/frozen_proxy.py``): to the client it looks like a server that hangs. Before, the
synchronous publish (``delay()`` from a plain thread) and the asyncio one waited for the
reply for good, and the caller with them.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import taskflow._redis.connection as redis_connection
import taskflow._redis.sync as redis_sync
import taskflow.kernel.enqueue as enqueue_module
import taskflow.operations.admin as admin_module
from taskflow import App, Task
from taskflow.errors import BrokerError, ResultTimeout
from tests.frozen_proxy import FrozenProxy, app_through, frozen_proxy, noop_of
from tests.integration.redis_helpers import drop_prefix, shared_url

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SEND = 1.0  # SEND_TIMEOUT in these tests
UNDO = 1.0  # UNDO_TIMEOUT
CALL = 1.0  # CALL_TIMEOUT
READ = 1.5  # the operations API's READ_TIMEOUT


@pytest.fixture
def prefix(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setattr(redis_connection, "SEND_TIMEOUT", SEND)
    monkeypatch.setattr(redis_connection, "CALL_TIMEOUT", CALL)
    monkeypatch.setattr(redis_sync, "_BACKSTOP", SEND)
    monkeypatch.setattr(enqueue_module, "UNDO_TIMEOUT", UNDO)
    monkeypatch.setattr(admin_module, "READ_TIMEOUT", READ)
    url, name = shared_url(lease=30.0)
    yield name
    drop_prefix(url, name)


@pytest.fixture
def proxy() -> Iterator[FrozenProxy]:
    with frozen_proxy(("127.0.0.1", 6379)) as running:
        yield running


@pytest.fixture
def app(prefix: str, proxy: FrozenProxy) -> Iterator[App]:
    """An app on the shared Redis through ``proxy``; closed after the test."""
    url = f"redis://127.0.0.1:{proxy.port}/0?prefix={prefix}"
    with app_through("hung", url) as hung:
        yield hung


@pytest.fixture
def noop(app: App) -> Task[[], None]:
    """A task of ``app`` that does nothing (no worker runs it: what it sends stays)."""
    return noop_of(app)


def bounded(call: Callable[[], Any], limit: float) -> tuple[float, BaseException | None]:
    """Run ``call`` in a thread; (seconds it took, what it raised). Fails the test if it
    has not returned within ``limit`` seconds (the thread is left to the proxy's close)."""
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            call()
        except BaseException as exc:
            outcome.append(exc)
        else:
            outcome.append(None)

    started = time.monotonic()
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(limit)
    assert not thread.is_alive(), f"still waiting after {limit}s"
    return time.monotonic() - started, outcome[0]


def test_delay_on_a_hung_server_raises_broker_error_within_its_bound(
    app: App, proxy: FrozenProxy, noop: Task[[], None], caplog: pytest.LogCaptureFixture
) -> None:
    noop.delay()  # connected, the publish script loaded
    proxy.freeze()
    with caplog.at_level(logging.WARNING, logger="taskflow.app"):
        took, error = bounded(noop.delay, 20.0)
    assert isinstance(error, BrokerError)
    assert f"127.0.0.1:{proxy.port}" in str(error)
    assert "no reply within" in str(error) and "may or may not" in str(error)
    # The publish's bound only: the record went in the publish's own script (the store
    # shares the broker's server and prefix), so it is there exactly when the message
    # is, and there is nothing to undo (a delete would leave a sent task without one).
    assert app.kernel.backends.records_linked
    assert took < SEND + 2.0
    assert "could not undo a failed send" not in caplog.text


def test_an_async_send_on_a_hung_server_raises_broker_error_within_its_bound(
    app: App, proxy: FrozenProxy
) -> None:
    @app.task(name="hung.noop", store_result=False)
    def noop() -> None: ...

    async def send_twice() -> None:
        await noop.adelay()
        proxy.freeze()
        await noop.adelay()

    took, error = bounded(lambda: asyncio.run(send_twice()), 20.0)
    assert isinstance(error, BrokerError)
    assert "no reply within" in str(error)
    assert took < SEND + 2.0


def test_get_on_a_hung_server_raises_result_timeout_at_its_timeout(
    app: App, proxy: FrozenProxy, noop: Task[[], None]
) -> None:
    result = noop.delay()  # no worker: it stays queued
    proxy.freeze()
    took, error = bounded(lambda: result.get(timeout=1.0), 20.0)
    # Before, its subscription waited 10 s for the server's confirmation and raised a bare
    # TimeoutError.
    assert isinstance(error, ResultTimeout)
    assert took < 2.0


def test_status_on_a_hung_server_raises_broker_error_within_its_bound(
    app: App, proxy: FrozenProxy, noop: Task[[], None]
) -> None:
    result = noop.delay()
    assert result.status.value == "queued"
    proxy.freeze()
    took, error = bounded(lambda: result.status, 20.0)
    assert isinstance(error, BrokerError)  # before: no answer, and no end to the wait
    assert f"127.0.0.1:{proxy.port}" in str(error) and "no reply within" in str(error)
    assert took < CALL + 1.0


def test_operator_reads_on_a_hung_server_raise_broker_error_within_their_bound(
    app: App, proxy: FrozenProxy, noop: Task[[], None]
) -> None:
    noop.delay()
    assert [q.name for q in app.admin.queues()] == ["default"]
    proxy.freeze()
    outcomes = [
        bounded(app.admin.queues, 20.0),
        bounded(lambda: app.admin.peek("default"), 20.0),
        bounded(app.admin.workers, 20.0),
    ]
    for took, error in outcomes:  # before: each waited for good
        assert isinstance(error, BrokerError), error
        assert f"127.0.0.1:{proxy.port}" in str(error)
        assert took < READ + 1.0


def test_operator_actions_on_a_hung_server_raise_broker_error_within_their_bound(
    app: App, proxy: FrozenProxy, noop: Task[[], None]
) -> None:
    waiting = noop.delay()
    assert [q.name for q in app.admin.queues()] == ["default"]
    proxy.freeze()
    actions = {
        "pause": lambda: app.admin.pause("default"),
        "resume": lambda: app.admin.resume("default"),
        "purge": lambda: app.admin.purge("default"),
        "replay": lambda: app.admin.replay("default"),
        "discard": lambda: app.admin.discard("default"),
        "cancel": lambda: app.admin.cancel(waiting.id),
    }
    for name, action in actions.items():  # before: all but cancel waited for good
        took, error = bounded(action, 20.0)
        assert isinstance(error, BrokerError), (name, error)
        assert "no reply within" in str(error), (name, error)
        assert f"127.0.0.1:{proxy.port}" in str(error), (name, error)
        assert took < CALL + 1.0, (name, took)


def test_the_broker_side_of_a_cancel_on_a_hung_server_is_bounded(
    app: App, proxy: FrozenProxy, noop: Task[[], None]
) -> None:
    waiting = noop.delay()
    broker = app.kernel.broker
    proxy.freeze()
    took, error = bounded(lambda: app.kernel.call(broker.cancel(waiting.id, "default")), 20.0)
    assert isinstance(error, BrokerError) and "no reply within" in str(error)
    assert took < CALL + 1.0


def test_record_writes_on_a_hung_server_raise_broker_error_within_their_bound(
    app: App, proxy: FrozenProxy
) -> None:
    # Those off the worker's path: its own (``update``, canvas values) go unbounded with
    # its fetches and settles (see RedisResultStore._send_updates).
    results = app.kernel.results
    app.kernel.call(app.kernel.connect())
    app.kernel.call(results.create_many([("t-1", {"status": "queued"})], 60.0))
    proxy.freeze()
    writes = {
        "update_many": lambda: app.kernel.call(
            results.update_many([("t-1", {"status": "cancelled"})], 60.0)
        ),
        "delete": lambda: app.kernel.call(results.delete("t-1")),
        "create": lambda: app.kernel.call(results.create_many([("t-2", {})], 60.0)),
    }
    for name, write in writes.items():  # before: each waited for good
        took, error = bounded(write, 20.0)
        assert isinstance(error, BrokerError) and "no reply within" in str(error), (name, error)
        assert took < CALL + 1.0, (name, took)
