"""Stopping a worker whose Redis server stopped answering returns within seconds.

The app connects through a proxy that stops relaying while keeping every connection open
(``tests/frozen_proxy.py``): to the client it looks like a server that hangs. An idle
worker waits in a ``BLPOP`` with its fetch pipelined behind it; stopping cancels that wait,
which pushes a wake-up token to end the ``BLPOP`` and reads what the fetch took, to hand it
back. The push went through the client's retries (a 10-second socket timeout, six tries):
a stop took 53 seconds.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from taskflow import App
from taskflow.brokers._redis_wait import _HAND_BACK_WAIT
from tests.frozen_proxy import frozen_proxy
from tests.integration.redis_helpers import drop_prefix, shared_url

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
def prefix() -> Iterator[str]:
    url, name = shared_url(lease=30.0)
    yield name
    drop_prefix(url, name)


def test_stopping_a_worker_whose_redis_server_hangs_returns_within_seconds(prefix: str) -> None:
    with frozen_proxy(("127.0.0.1", 6379)) as proxy:
        app = App("hung-redis", broker=f"redis://127.0.0.1:{proxy.port}/0?prefix={prefix}")

        @app.task(name="hung.noop")
        def noop() -> int:
            return 7

        try:
            worker = app.worker(concurrency=2)
            worker.start()
            assert noop.delay().get(timeout=10) == 7
            # The settle's reply read too (the result can be seen before it arrives): the
            # worker now holds nothing and waits in its BLPOP.
            deadline = time.monotonic() + 10
            while worker.stats()["processed"] < 1:
                assert time.monotonic() < deadline, "the task was never settled"
                time.sleep(0.01)
            proxy.freeze()
            started = time.monotonic()
            worker.stop()
            took = time.monotonic() - started
            # The hand-back of the wait, then the heartbeat's removal: each bounded.
            assert took < 2 * _HAND_BACK_WAIT + 3.0, f"stop took {took:.1f}s"
            started = time.monotonic()
        finally:
            app.close()
        assert time.monotonic() - started < 12.0  # the kernel's bound, with room
