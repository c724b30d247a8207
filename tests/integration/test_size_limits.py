"""Message size limits are checked at enqueue, with a PayloadError that names the task and
the sizes (never the value), and nothing is published."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from taskflow import App, chord
from taskflow.brokers import redis as redis_broker
from taskflow.brokers.base import Message
from taskflow.brokers.nats import HEADER_ROOM, NatsBroker
from taskflow.errors import PayloadError, TaskFailed
from taskflow.message import MAX_ERROR_MESSAGE, MAX_TRACEBACK
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
    monkeypatch.setattr(redis_broker, "MAX_BODY", 4096)  # the real one is 512 MiB
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


def test_a_result_too_large_for_the_nats_store_fails_its_task_at_once(nats_url: str) -> None:
    # The store's write would be refused on every try: it used to be retried forever, the
    # task left running and its message held by a worker that kept renewing its lease.
    with App("sizes-results", broker=nats_url) as app:

        @app.task(name="sizes.large", retries=3)
        def large(size: int) -> str:
            return "r" * size

        with app.worker(concurrency=1) as worker:
            result = large.delay(2 * 1024 * 1024)
            with pytest.raises(TaskFailed) as caught:
                result.get(timeout=10)
            fits = large.delay(1000).get(timeout=10)
            stats = worker.stats()

        assert caught.value.exc_type == "taskflow.errors.RecordTooLarge"
        assert f"the record of task {result.id} is 2,097," in caught.value.message
        assert "max_payload" in caught.value.message and "rrrr" not in caught.value.message
        assert result.info().attempts == 1  # not retried: it would not fit the next time
        assert fits == "r" * 1000
        assert (stats["failed"], stats["dead_lettered"], stats["buffered"]) == (1, 1, 0)
        (dead,) = app.admin.dead_letters("default").items
        assert (dead.task_id, dead.reason) == (result.id, "payload")


@pytest.mark.parametrize("backend", ["nats", "redis"])
def test_an_error_message_of_megabytes_is_cut_in_the_record(
    backend: str, nats_url: str, redis_url: str
) -> None:
    size = 3 * 1024 * 1024
    with App("sizes-errors", broker=nats_url if backend == "nats" else redis_url) as app:

        @app.task(name="sizes.loud", retries=0)
        def loud(n: int) -> None:
            raise ValueError("e" * n)

        with app.worker(concurrency=1):
            result = loud.delay(size)
            with pytest.raises(TaskFailed) as caught:
                result.get(timeout=10)

    cut = size - MAX_ERROR_MESSAGE
    assert caught.value.message == "e" * MAX_ERROR_MESSAGE + f" [... {cut:,} more characters]"
    assert len(caught.value.traceback) < MAX_TRACEBACK + 100
    assert "in loud\n" in caught.value.traceback  # the frame that raised, kept


@pytest.mark.parametrize("shape", ["chord", "chain"])
def test_a_canvas_step_too_large_for_nats_fails_its_canvas_at_once(
    nats_url: str, shape: str
) -> None:
    # A chord's callback carries every result; a chain's next step its parent's. The
    # broker refuses such a message on every try: it used to be retried with the whole
    # continuation, each parent delivered again and again as if its worker were lost.
    with App("sizes-canvas", broker=nats_url) as app:

        @app.task(name="sizes.part")
        def part(size: int) -> str:
            return "p" * size

        @app.task(name="sizes.total")
        def total(parts: list[str]) -> int:
            return sum(len(p) for p in parts)

        @app.task(name="sizes.length")
        def length(text: str) -> int:
            return len(text)

        with app.worker(concurrency=2) as worker:
            if shape == "chord":
                handle: Any = chord([part.s(400_000) for _ in range(4)], total.s()).apply_async()
                parents = 4
            else:
                handle = (part.s(1_045_000) | length.s()).apply_async()
                parents = 1
            with pytest.raises(TaskFailed) as caught:
                handle.get(timeout=10)
            stats = worker.stats()

    assert caught.value.exc_type == "taskflow.errors.PayloadError"
    assert "max_payload" in caught.value.message and "pppp" not in caught.value.message
    assert (stats["processed"], stats["succeeded"]) == (parents, parents)  # each ran once
