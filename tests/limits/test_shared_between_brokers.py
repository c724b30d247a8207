"""Two broker instances on one backend (as two worker processes have) share one limit."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from taskflow.brokers.base import Broker
from taskflow.brokers.limits import ClusterLimiter
from taskflow.brokers.nats import NatsBroker
from taskflow.brokers.redis import RedisBroker
from taskflow.brokers.sqlite import SqliteBroker
from tests.conftest import require_service
from tests.contract.backend_nats import _delete_streams
from tests.contract.conftest import run
from tests.integration.redis_helpers import drop_prefix

Pair = Callable[[], tuple[Broker, Broker]]


@pytest.fixture(params=["redis", "nats", "sqlite"])
def pair(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Pair]:
    """Builds two unconnected brokers on the same backend and namespace."""
    prefix = f"tflim{uuid.uuid4().hex[:10]}"
    cleanup: list[Callable[[], None]] = []

    def make() -> tuple[Broker, Broker]:
        if request.param == "redis":
            require_service("redis", "127.0.0.1", 6379)
            url = "redis://127.0.0.1:6379/0"
            cleanup.append(lambda: drop_prefix(url, prefix))
            return RedisBroker(url, prefix=prefix), RedisBroker(url, prefix=prefix)
        if request.param == "nats":
            require_service("nats", "127.0.0.1", 4222)
            first = NatsBroker("nats://127.0.0.1:4222", prefix=prefix)
            second = NatsBroker("nats://127.0.0.1:4222", prefix=prefix)
            names = [first.work, first.delays, first.dlq, f"KV_{first.state_bucket}"]
            cleanup.append(lambda: asyncio.run(_delete_streams(names)))
            return first, second
        url = f"sqlite:///{tmp_path / 'shared.db'}"
        return SqliteBroker(url), SqliteBroker(url)

    yield make
    for step in cleanup:
        step()


def limiters(a: Broker, b: Broker) -> tuple[ClusterLimiter, ClusterLimiter]:
    first, second = a.limiter(), b.limiter()
    assert first is not None
    assert second is not None
    return first, second


def test_two_brokers_on_one_backend_share_permits_and_tokens(pair: Pair) -> None:
    a, b = pair()
    key = f"tests.shared-{uuid.uuid4().hex[:8]}"

    async def scenario() -> None:
        await a.connect()
        await b.connect()
        try:
            first, second = limiters(a, b)
            answers = await asyncio.gather(
                *(lim.acquire(key, f"h{i}", 2) for i, lim in enumerate([first, second] * 4))
            )
            assert sum(1 for x in answers if x == 0.0) == 2
            assert await first.take_token(key, 1.0, 1) == 0.0
            assert await second.take_token(key, 1.0, 1) > 0  # the other took it
            held = [f"h{i}" for i, x in enumerate(answers) if x == 0.0]
            await second.release(key, held[0])  # given back through the other broker
            assert await first.acquire(key, "late", 2) == 0.0
        finally:
            await a.close()
            await b.close()

    run_loop(scenario())


def run_loop(coro: Awaitable[None]) -> None:
    loop = asyncio.new_event_loop()
    try:
        run(loop, coro)
    finally:
        loop.run_until_complete(loop.shutdown_default_executor())
        loop.close()
