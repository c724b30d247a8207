"""Message size limits are checked at enqueue, with a PayloadError that names the task and
the sizes (never the value), and nothing is published."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import pytest

from taskflow import App
from taskflow.brokers import _redis_publish
from taskflow.brokers.base import Message
from taskflow.brokers.nats import HEADER_ROOM, NatsBroker
from taskflow.errors import PayloadError
from tests.integration import nats_helpers, redis_helpers

pytestmark = pytest.mark.integration


@pytest.fixture
def nats_url() -> Iterator[str]:
    url, prefix = nats_helpers.shared_url(lease=5)
    yield url
    nats_helpers.drop_prefix(url, prefix)


@pytest.fixture
def redis_url() -> Iterator[str]:
    url, prefix = redis_helpers.shared_url(lease=5)
    yield url
    redis_helpers.drop_prefix(url, prefix)


def test_a_message_over_the_nats_max_payload_is_refused_at_enqueue(nats_url: str) -> None:
    with App("sizes", broker=nats_url) as app:

        @app.task(name="sizes.blob")
        def blob(data: str) -> int:
            return len(data)

        limit = 1024 * 1024 - HEADER_ROOM  # the test server runs with the default max_payload
        with pytest.raises(PayloadError) as caught:
            blob.delay("v" * (1024 * 1024))
        text = str(caught.value)
        assert "sizes.blob" in text and f"{limit:,}" in text and "max_payload" in text
        assert "vvvv" not in text
        assert app.kernel.call(app.broker.depth("default"))["ready"] == 0  # nothing was published
        with app.worker(concurrency=1):
            assert blob.delay("v" * (limit - 1000)).get(timeout=10) == limit - 1000


def test_a_nats_message_at_the_limit_can_still_be_dead_lettered_with_a_long_error(
    nats_url: str,
) -> None:
    url, query = nats_url.split("?", 1)
    prefix = dict(part.split("=", 1) for part in query.split("&"))["prefix"]
    queue = f"q-{uuid.uuid4().hex[:8]}"

    async def body() -> None:
        broker = NatsBroker(url, prefix=prefix)
        await broker.connect()
        try:
            size = 1024 * 1024 - HEADER_ROOM
            await broker.publish([Message(uuid.uuid4().hex, queue, b"b" * size)])
            (got,) = await broker.fetch([queue], 1, 5.0)
            assert await got.dead_letter("failed", "e" * 50_000)
            (dead,) = await broker.dead_letters(queue)
            assert len(dead.body) == size
            assert dead.error is not None and dead.error.endswith("[truncated]")
        finally:
            await broker.close()

    asyncio.run(body())


def test_a_message_over_the_redis_value_limit_is_refused_at_enqueue(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_redis_publish, "MAX_BODY", 4096)  # the real one is 512 MiB
    with App("sizes", broker=redis_url) as app:

        @app.task(name="sizes.blob")
        def blob(data: str) -> int:
            return len(data)

        with pytest.raises(PayloadError) as caught:
            blob.delay("v" * 5000)
        text = str(caught.value)
        assert "sizes.blob" in text and "4,096" in text and "vvvv" not in text
        with pytest.raises(PayloadError):
            app.broker.publish_blocking([Message("x", "default", b"v" * 5000)])
        assert app.kernel.call(app.broker.depth("default"))["ready"] == 0
        with app.worker(concurrency=1):
            assert blob.delay("v" * 100).get(timeout=10) == 100
