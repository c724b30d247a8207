"""A bounded NATS queue checks its room from the streams' own counts while they show room,
and counts the queue exactly (ten consumer infos, each a scan of the stream on 2.9) only
when they do not."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from taskflow.brokers.nats import NatsBroker
from taskflow.errors import QueueFull
from tests.conftest import require_service
from tests.contract.backend_nats import URL, _delete_streams
from tests.contract.test_broker_contract import msg


def _run(test: Callable[[NatsBroker, list[str]], Awaitable[None]]) -> None:
    """Run ``test`` with a connected broker on a fresh prefix and the list of queues whose
    depth it counted exactly."""
    require_service("nats", "127.0.0.1", 4222)

    async def body() -> None:
        broker = NatsBroker(URL, prefix=f"tfbound{uuid.uuid4().hex[:12]}", lease=30)
        counted: list[str] = []
        depth = broker.depth

        async def spy(queue: str) -> Any:
            counted.append(queue)
            return await depth(queue)

        broker.depth = spy  # type: ignore[method-assign]
        try:
            await broker.connect()
            await test(broker, counted)
        finally:
            await broker.close()
            await _delete_streams(
                [broker.work, broker.delays, broker.dlq, f"KV_{broker.state_bucket}"]
            )

    asyncio.run(body())


def test_a_queue_far_from_its_bound_is_not_counted() -> None:
    async def test(broker: NatsBroker, counted: list[str]) -> None:
        await broker.declare("q", max_length=100)
        for i in range(10):
            await broker.publish([msg("q", f"m{i}")])
        await broker.publish([msg("q", "later", eta=9e9)])  # the delay stream, too
        assert counted == []
        with pytest.raises(QueueFull):  # 11 + 90 > 100: now it is counted, and full
            await broker.publish([msg("q", f"b{i}") for i in range(90)])
        assert counted == ["q"]

    _run(test)


def test_other_queues_and_leased_messages_do_not_fill_a_queue() -> None:
    async def test(broker: NatsBroker, counted: list[str]) -> None:
        await broker.declare("small", max_length=2)
        await broker.publish([msg("other", f"o{i}") for i in range(5)])
        await broker.publish([msg("small", "s1"), msg("small", "s2")])
        taken = await broker.fetch(["small"], 2, 0)
        assert len(taken) == 2
        # Seven messages in the work stream, none of them waiting in "small".
        await broker.publish([msg("small", "s3"), msg("small", "s4")])
        assert counted == ["small", "small"]
        with pytest.raises(QueueFull):
            await broker.publish([msg("small", "s5")])

    _run(test)
