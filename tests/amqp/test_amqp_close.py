"""A RabbitMQ server that stops answering: closing returns within a bound and says so, and
a connection found lost is given up at once rather than closed politely.

The broker connects through a proxy that stops relaying while keeping every connection
open (``tests/frozen_proxy.py``): to the client it looks like a server that hangs, or
one that stopped reading under a resource alarm.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time

import pytest

from taskflow.brokers._kombu_io import CLOSE_STEP
from taskflow.brokers.kombu import KombuBroker
from taskflow.errors import BrokerError
from tests.amqp import amqp_helpers as h
from tests.amqp.amqp_helpers import msg
from tests.frozen_proxy import frozen_proxy

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def io_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name == "taskflow-amqp-io"]


def proxied(port: int, prefix: str, **kw: float) -> KombuBroker:
    return KombuBroker(f"amqp://guest:guest@127.0.0.1:{port}", prefix=prefix, **kw)


async def drain_directly(prefix: str, expected: int) -> dict[str, int]:
    """Every message left on ``q`` (fetched on a connection of its own, acked): id ->
    delivery count."""
    broker = KombuBroker(h.AMQP, prefix=prefix)
    await broker.connect()
    ids: dict[str, int] = {}
    try:
        deadline = time.monotonic() + 30
        while len(ids) < expected and time.monotonic() < deadline:
            for delivery in await broker.fetch(["q"], 50, 1.0):
                ids[delivery.id] = delivery.delivery_count
                assert await delivery.ack()
    finally:
        await broker.close()
    return ids


def test_closing_a_broker_whose_server_hangs_returns_and_loses_nothing(
    prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    sent = [msg(str(i).encode()) for i in range(20)]

    async def body() -> float:
        with frozen_proxy(("127.0.0.1", 5672)) as proxy:
            broker = proxied(proxy.port, prefix)
            await broker.connect()
            await broker.publish(sent)
            taken = await broker.fetch(["q"], 5, 5.0)  # its consumer is pushed 10 more
            assert len(taken) == 5
            proxy.freeze()
            started = time.monotonic()
            with caplog.at_level(logging.WARNING, logger="taskflow.broker.amqp"):
                await broker.close()
            took = time.monotonic() - started
            assert io_threads() == []  # the I/O thread ended, not left blocked
        # The proxy closed the server's side: RabbitMQ puts back what it delivered.
        got = await drain_directly(prefix, len(sent))
        assert sorted(got) == sorted(m.id for m in sent)
        # Those it had delivered (taken or pushed) count one lost delivery; the rest none.
        assert sorted(got.values()) == [1] * 5 + [2] * 15
        return took

    took = asyncio.run(asyncio.wait_for(body(), 90))
    assert took < CLOSE_STEP + 1.5  # was 25 s: 15 waiting for the hand-back, 10 joining
    assert "the server did not answer within 2s" in caplog.text
    assert "without handing back" in caplog.text
    assert "guest:***@127.0.0.1" in caplog.text
    assert "guest:guest" not in caplog.text


def test_a_connection_lost_to_a_hung_server_is_let_go_and_calls_are_answered(
    prefix: str,
) -> None:
    async def body() -> None:
        with frozen_proxy(("127.0.0.1", 5672)) as proxy:
            broker = proxied(proxy.port, prefix, confirm_timeout=1.0, connect_timeout=1.0)
            await broker.connect()
            await broker.publish([msg()])
            proxy.freeze()
            with pytest.raises(BrokerError):  # no confirm: the connection is taken as lost
                await asyncio.wait_for(broker.publish([msg()]), 10)
            # Before, the I/O thread then waited for the answer to its close handshake,
            # which a hung server never sends: every later call waited with it.
            started = time.monotonic()
            with pytest.raises(BrokerError, match="not connected"):
                await asyncio.wait_for(broker.publish([msg()]), 10)
            assert time.monotonic() - started < 2.0
            started = time.monotonic()
            await broker.close()
            assert time.monotonic() - started < CLOSE_STEP + 1.5
            assert io_threads() == []

    asyncio.run(asyncio.wait_for(body(), 60))


def test_closing_while_a_publish_waits_for_its_confirm_ends_both(
    prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def body() -> float:
        with frozen_proxy(("127.0.0.1", 5672)) as proxy:
            broker = proxied(proxy.port, prefix, confirm_timeout=60.0)
            await broker.connect()
            await broker.publish([msg()])
            proxy.freeze()
            publishing = asyncio.ensure_future(broker.publish([msg()]))
            await asyncio.sleep(0)  # the publish is on the I/O thread, waiting
            started = time.monotonic()
            with caplog.at_level(logging.WARNING, logger="taskflow.broker.amqp"):
                await broker.close()
            took = time.monotonic() - started
            with pytest.raises(BrokerError):  # answered, not left waiting
                await asyncio.wait_for(publishing, 5)
            assert io_threads() == []
        return took

    took = asyncio.run(asyncio.wait_for(body(), 90))
    assert took < 3 * CLOSE_STEP + 1.5  # was over 25 s
    assert "closing took longer than 4s" in caplog.text
