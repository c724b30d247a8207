"""A RabbitMQ resource alarm: sends fail at once and say why, the connection is kept, and
sending works again once the alarm clears.

Under a memory or disk alarm RabbitMQ stops reading the connections that publish and says
so (``connection.blocked``). Before, each send waited ``confirm_timeout`` for a confirm
that could not come, then took the connection for lost and made another, handing back
every delivery the process held; the next send met the same alarm. The alarm is raised
for real: ``rabbitmqctl`` sets the memory high watermark far below what the node uses,
and puts the node's own value back afterwards.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator

import pytest

from taskflow.brokers.kombu import KombuBroker
from taskflow.errors import BrokerError
from tests.amqp import amqp_helpers as h
from tests.amqp.amqp_helpers import msg

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CONFIRM = 2.0  # confirm_timeout in this test


@pytest.fixture
def alarm() -> Iterator[tuple[str, str]]:
    """(command to raise a memory alarm, command to clear it): the node's own watermark
    is put back at the end whatever happened."""
    read = "vm_memory_monitor:get_vm_memory_high_watermark()."
    own = h.rabbitmqctl("eval", read).strip()
    try:
        float(own)
    except ValueError:
        pytest.skip(f"the node's memory watermark is not a fraction ({own!r})")
    try:
        yield "0.0000001", own
    finally:
        h.rabbitmqctl("set_vm_memory_high_watermark", own)
        for _ in range(100):  # cleared for the tests that come after
            if h.rabbitmqctl("eval", "rabbit_alarm:get_alarms().").strip() == "[]":
                break
            time.sleep(0.1)


async def until(condition: object, what: str, limit: float = 15.0) -> None:
    """Wait for ``condition()`` (a state the server's frames set on the I/O thread)."""
    deadline = time.monotonic() + limit
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"{what} not seen within {limit}s"
        await asyncio.sleep(0.05)


def test_sends_under_a_resource_alarm_fail_at_once_and_work_again_after_it(
    prefix: str, alarm: tuple[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    raise_to, clear_to = alarm

    async def body() -> tuple[list[str], list[str]]:
        broker = KombuBroker(h.AMQP, prefix=prefix, confirm_timeout=CONFIRM)
        await broker.connect()
        sent: list[str] = []
        unsure: list[str] = []
        try:
            first = msg()
            await broker.publish([first])
            sent.append(first.id)
            io = broker.io
            generation = io.gen
            h.rabbitmqctl("set_vm_memory_high_watermark", raise_to)
            # The send that meets the alarm: the server reads it, then stops reading and
            # says why. Its confirm may not come: then it may or may not be queued.
            held = msg()
            try:
                await broker.publish([held])
                sent.append(held.id)
            except BrokerError as exc:
                assert "may or may not have been written" in str(exc)
                assert "resource alarm" in str(exc)
                unsure.append(held.id)
            await until(lambda: io.blocked is not None, "connection.blocked")
            [alarm] = await broker.alarms()  # what app.admin.alarms() and stats() report
            assert "the server blocks publishing" in alarm and "guest:***@" in alarm
            refused = msg()
            started = time.monotonic()
            with pytest.raises(BrokerError) as caught:
                await broker.publish([refused])
            assert time.monotonic() - started < 1.0  # before: confirm_timeout, then a reconnect
            assert f"message {refused.id} was not sent" in str(caught.value)
            assert "resource alarm" in str(caught.value)
            assert "guest:***@127.0.0.1" in str(caught.value)
            h.rabbitmqctl("set_vm_memory_high_watermark", clear_to)
            await until(lambda: io.blocked is None, "connection.unblocked")
            assert await broker.alarms() == []
            after = msg()
            await broker.publish([after])
            sent.append(after.id)
            assert io.gen == generation  # the same connection all along
        finally:
            await broker.close()
        return sent, unsure

    with caplog.at_level(logging.WARNING, logger="taskflow.broker.amqp"):
        sent, unsure = asyncio.run(asyncio.wait_for(body(), 120))
    assert "stopped taking messages" in caplog.text
    assert "takes messages again" in caplog.text
    assert "guest:guest" not in caplog.text

    async def drain() -> list[str]:
        broker = KombuBroker(h.AMQP, prefix=prefix)
        await broker.connect()
        got: list[str] = []
        try:
            for _ in range(20):
                batch = await broker.fetch(["q"], 10, 0.5)
                for delivery in batch:
                    got.append(delivery.id)
                    assert await delivery.ack()
                if not batch and len(got) >= len(sent):
                    break
        finally:
            await broker.close()
        return got

    got = asyncio.run(asyncio.wait_for(drain(), 60))
    # Every send that said so is queued once; the refused one is not; the one left unsure
    # is there or not, never twice.
    assert sorted(got) == sorted(sent + [i for i in unsure if i in got])
    assert len(got) == len(set(got))
