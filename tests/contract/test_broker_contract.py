"""The broker contract: every broker passes these tests (see ``taskflow/brokers/base.py``).

They run on real time so that real servers pass them too, and never sleep to synchronize:
where time has to pass (an eta, a lease), a ``fetch`` with a timeout is the wait, and the
assertions allow generous slack for a loaded machine. Admin tests run only for brokers that
implement :class:`~taskflow.brokers.base.BrokerAdmin`.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Sequence
from typing import Any

import pytest

from taskflow.brokers.base import (
    Broker,
    BrokerAdmin,
    DeadLetter,
    Delivery,
    Message,
    RecordClose,
)
from taskflow.errors import BrokerError, QueueFull
from tests.on_time import assert_on_time

from .conftest import MakeBroker, run

LEASE = 0.5  # short lease for the redelivery tests (real time on every backend)


def msg(queue: str, body: bytes | str = b"x", **kw: Any) -> Message:
    """A message with a fresh id."""
    data = body.encode() if isinstance(body, str) else body
    return Message(id=uuid.uuid4().hex, queue=queue, body=data, **kw)


def bodies(deliveries: Sequence[Delivery]) -> list[bytes]:
    return [d.body for d in deliveries]


async def drain(
    broker: Broker, queues: Sequence[str], want: int, timeout: float = 2.0, batch: int = 100
) -> list[Delivery]:
    """Fetch until ``want`` deliveries came (a broker may return partial batches)."""
    got: list[Delivery] = []
    while len(got) < want:
        more = await broker.fetch(queues, min(batch, want - len(got)), timeout)
        if not more:
            break
        got.extend(more)
    return got


async def fetch_one(broker: Broker, queue: str, timeout: float = 2.0) -> Delivery:
    got = await broker.fetch([queue], 1, timeout)
    assert len(got) == 1, f"expected one delivery from {queue}, got {got}"
    return got[0]


def admin_of(broker: Broker) -> BrokerAdmin:
    if not isinstance(broker, BrokerAdmin):
        pytest.skip(f"{type(broker).__name__} has no admin interface")
    return broker


async def settled_depth(
    admin: BrokerAdmin, queue: str, want: dict[str, int], limit: float = 5.0
) -> dict[str, int]:
    """``admin.depth(queue)`` once the counts named in ``want`` match it, or as it stands
    after ``limit`` seconds. A settle is sent without waiting for an answer on NATS, and
    the server counts it a moment later, so its counts are read until they agree."""
    deadline = time.monotonic() + limit
    while True:
        depth = await admin.depth(queue)
        if all(depth[k] == v for k, v in want.items()) or time.monotonic() > deadline:
            return depth
        await asyncio.sleep(0.01)


# -- publish and fetch -----------------------------------------------------------------


def test_a_published_message_comes_back_with_its_id_queue_body_and_priority(
    loop: asyncio.AbstractEventLoop, broker: Broker, queue: str
) -> None:
    sent = msg(queue, b"\x00payload\xff", priority=7, max_deliveries=3)

    async def body() -> None:
        await broker.publish([sent])
        got = await fetch_one(broker, queue)
        assert (got.id, got.queue, got.body, got.priority) == (
            sent.id,
            queue,
            b"\x00payload\xff",
            7,
        )
        assert got.delivery_count == 1
        assert await got.ack()

    run(loop, body())


def test_a_message_id_of_any_length_comes_back(
    loop: asyncio.AbstractEventLoop, broker: Broker, queue: str
) -> None:
    # Producers take any printable task id (AMQP carries a message id of 255 bytes at most).
    long_id = "order-" + "é" * 300

    async def body() -> None:
        await broker.publish([Message(id=long_id, queue=queue, body=b"x")])
        got = await fetch_one(broker, queue)
        assert got.id == long_id
        assert await got.ack()

    run(loop, body())


@pytest.mark.parametrize(
    "suffix",
    [pytest.param("q" * 300, id="300-characters"), pytest.param(".ä/*>:{x}", id="punctuation")],
)
def test_any_printable_queue_name_without_spaces_is_a_queue(
    loop: asyncio.AbstractEventLoop, broker: Broker, queue: str, suffix: str
) -> None:
    # Producers take such names (taskflow.options.check_queue): a broker that refused
    # them, or took the message but could not consume it, would leave a task unrun.
    name = f"{queue}-{suffix}"

    async def body() -> None:
        await broker.declare(name)
        await broker.publish([msg(name, b"later", eta=time.time() + 0.2)])
        await broker.publish([msg(name, b"high", priority=9), msg(name, b"low")])
        got = await drain(broker, [name], 3, timeout=5.0)
        assert bodies(got) == [b"high", b"low", b"later"]
        assert {d.queue for d in got} == {name}
        for delivery in got:
            assert await delivery.ack()
        if isinstance(broker, BrokerAdmin):
            await broker.pause(name)
            await broker.publish([msg(name, b"held")])
            assert await broker.fetch([name], 10, 0.2) == []
            await broker.resume(name)
            assert bodies(await drain(broker, [name], 1, timeout=5.0)) == [b"held"]

    run(loop, body())


def test_publishing_an_empty_batch_does_nothing(
    loop: asyncio.AbstractEventLoop, broker: Broker, queue: str
) -> None:
    async def body() -> None:
        await broker.publish([])
        assert await broker.fetch([queue], 10, 0) == []

    run(loop, body())


def test_higher_priority_is_delivered_first_and_equal_priorities_in_fifo_order(
    loop: asyncio.AbstractEventLoop, broker: Broker, queue: str
) -> None:
    low = [msg(queue, f"low-{i}", priority=1) for i in range(20)]
    high = [msg(queue, f"high-{i}", priority=8) for i in range(5)]

    async def body() -> None:
        await broker.publish(low)
        await broker.publish(high)
        got = await drain(broker, [queue], 25)
        assert [d.id for d in got] == [m.id for m in high + low]

    run(loop, body())


def test_every_priority_from_9_down_to_0_is_served_in_order(
    loop: asyncio.AbstractEventLoop, broker: Broker, queue: str
) -> None:
    order = [3, 0, 9, 5, 1, 7, 2, 8, 6, 4]

    async def body() -> None:
        await broker.publish([msg(queue, str(p), priority=p) for p in order])
        got = await drain(broker, [queue], 10)
        assert [d.priority for d in got] == list(range(9, -1, -1))
        assert bodies(got) == [str(p).encode() for p in range(9, -1, -1)]

    run(loop, body())


def test_fetch_takes_queues_in_the_given_order(
    loop: asyncio.AbstractEventLoop, broker: Broker, queue: str
) -> None:
    first, second = f"{queue}-first", f"{queue}-second"

    async def body() -> None:
        # The later queue holds the higher priority: queue order still wins.
        await broker.publish([msg(second, "s1", priority=9), msg(second, "s2", priority=9)])
        await broker.publish([msg(first, "f1"), msg(first, "f2")])
        got = await drain(broker, [first, second], 4)
        assert bodies(got) == [b"f1", b"f2", b"s1", b"s2"]
        assert [d.queue for d in got] == [first, first, second, second]

    run(loop, body())


def test_fetch_returns_no_more_than_max_messages(
    loop: asyncio.AbstractEventLoop, broker: Broker, queue: str
) -> None:
    async def body() -> None:
        await broker.publish([msg(queue, str(i)) for i in range(5)])
        batch = await broker.fetch([queue], 2, 2.0)
        assert 1 <= len(batch) <= 2
        rest = await drain(broker, [queue], 5 - len(batch))
        assert bodies(batch + rest) == [str(i).encode() for i in range(5)]
        assert await broker.fetch([queue], 10, 0) == []

    run(loop, body())


def test_a_waiting_fetch_wakes_promptly_when_a_message_is_published(
    loop: asyncio.AbstractEventLoop, broker: Broker, queue: str
) -> None:
    async def body() -> None:
        waiting = asyncio.ensure_future(broker.fetch([queue], 10, 10.0))
        # The queue is empty, so the fetch must still be waiting after a moment.
        done, _ = await asyncio.wait({waiting}, timeout=0.1)
        assert not done
        started = time.monotonic()
        await broker.publish([msg(queue, b"wake")])
        got = await asyncio.wait_for(waiting, 10.0)
        latency = time.monotonic() - started
        assert bodies(got) == [b"wake"]
        assert latency < 1.0, f"fetch woke {latency:.2f}s after the publish (timeout 10s)"

    run(loop, body())


def test_a_waiting_fetch_wakes_for_a_publish_from_another_thread(
    loop: asyncio.AbstractEventLoop, broker: Broker, queue: str
) -> None:
    if not broker.capabilities.blocking_publish:
        pytest.skip("no thread-safe publish")

    async def body() -> None:
        waiting = asyncio.ensure_future(broker.fetch([queue], 10, 10.0))
        done, _ = await asyncio.wait({waiting}, timeout=0.1)
        assert not done
        started = time.monotonic()
        await asyncio.to_thread(broker.publish_blocking, [msg(queue, b"threaded")])
        got = await asyncio.wait_for(waiting, 10.0)
        assert bodies(got) == [b"threaded"]
        assert time.monotonic() - started < 1.0

    run(loop, body())


def test_an_empty_fetch_returns_nothing_after_its_timeout(
    loop: asyncio.AbstractEventLoop, broker: Broker, queue: str
) -> None:
    async def body() -> None:
        started = time.monotonic()
        assert await broker.fetch([queue], 10, 0.2) == []
        elapsed = time.monotonic() - started
        assert 0.15 <= elapsed < 2.0
        assert await broker.fetch([queue], 10, 0) == []

    run(loop, body())


def test_a_message_with_an_eta_is_held_until_it_is_due(
    loop: asyncio.AbstractEventLoop, broker: Broker, queue: str
) -> None:
    async def body() -> None:
        # Long enough that sending cannot take it past its eta: a broker may set up its
        # delay queues on the first message that needs them (RabbitMQ's took over 0.3 s
        # once on a slow server, and the message was due before the fetch below).
        hold = 1.0
        now = time.time()
        await broker.publish([msg(queue, b"later", eta=now + hold), msg(queue, b"now")])
        assert bodies(await broker.fetch([queue], 10, 0)) == [b"now"]
        got = await fetch_one(broker, queue, timeout=3.0)
        assert got.body == b"later"
        assert time.time() >= now + hold - 0.05
        assert got.delivery_count == 1

    run(loop, body())


SAMPLES = 50


def staggered() -> list[float]:
    """``SAMPLES`` delays from 0.2 s, 10 ms apart, the latest first: each message sent is
    due before every one sent before it, so a consumer already waiting for those must
    wake earlier for it (and then once every 10 ms)."""
    return [0.2 + 0.01 * i for i in reversed(range(SAMPLES))]


async def lateness(broker: Broker, queue: str, due: dict[str, float], count: int) -> list[float]:
    """Fetch ``count`` messages as a waiting worker would; seconds each came after its due
    time (``due`` maps id to due time and may still be filled while this runs)."""
    late: list[float] = []
    while len(late) < count:
        got = await broker.fetch([queue], 50, 5.0)
        now = time.time()
        for delivery in got:
            late.append(now - due[delivery.id])
            assert await delivery.ack()
    return late


def test_messages_due_in_a_fraction_of_a_second_are_delivered_on_time(
    loop: asyncio.AbstractEventLoop, broker: Broker, queue: str
) -> None:
    async def body() -> None:
        due: dict[str, float] = {}
        waiting = asyncio.ensure_future(lateness(broker, queue, due, SAMPLES))
        start = time.time()
        for delay in staggered():
            sent = msg(queue, eta=start + delay)
            # Due at its eta, or as it is sent if sending the ones before took longer (a
            # broker may set up its delay queues on first use): it cannot come earlier.
            due[sent.id] = max(sent.eta or 0.0, time.time())
            await broker.publish([sent])
        late = await asyncio.wait_for(waiting, 10.0)
        assert_on_time(late, SAMPLES)

    run(loop, body())


def test_a_retry_delayed_a_fraction_of_a_second_is_delivered_on_time(
    loop: asyncio.AbstractEventLoop, broker: Broker, queue: str
) -> None:
    async def body() -> None:
        sent = [msg(queue, str(i)) for i in range(SAMPLES)]
        await broker.publish(sent)
        held = await drain(broker, [queue], SAMPLES)
        due: dict[str, float] = {}
        waiting = asyncio.ensure_future(lateness(broker, queue, due, SAMPLES))
        for delivery, delay in zip(held, staggered(), strict=True):
            due[delivery.id] = time.time() + delay
            assert await delivery.retry(b"again", delay, max_deliveries=1)
        late = await asyncio.wait_for(waiting, 10.0)
        assert_on_time(late, SAMPLES)

    run(loop, body())


def test_a_message_with_an_eta_in_the_past_is_delivered_at_once(
    loop: asyncio.AbstractEventLoop, broker: Broker, queue: str
) -> None:
    async def body() -> None:
        await broker.publish([msg(queue, b"overdue", eta=time.time() - 60)])
        assert bodies(await drain(broker, [queue], 1, timeout=1.0)) == [b"overdue"]

    run(loop, body())


# -- settling --------------------------------------------------------------------------


def test_an_acked_message_is_gone(
    loop: asyncio.AbstractEventLoop, broker: Broker, queue: str
) -> None:
    async def body() -> None:
        await broker.publish([msg(queue)])
        got = await fetch_one(broker, queue)
        assert await got.ack()
        assert await broker.fetch([queue], 10, 0) == []
        if isinstance(broker, BrokerAdmin):
            depth = await settled_depth(broker, queue, {"ready": 0, "inflight": 0, "dead": 0})
            assert (depth["ready"], depth["inflight"], depth["dead"]) == (0, 0, 0)

    run(loop, body())


def test_a_message_acked_before_its_lease_ran_out_is_not_redelivered(
    loop: asyncio.AbstractEventLoop, make_broker: MakeBroker, queue: str
) -> None:
    broker = make_broker(lease=0.3)

    async def body() -> None:
        await broker.publish([msg(queue, max_deliveries=5)])
        assert await (await fetch_one(broker, queue)).ack()
        assert await broker.fetch([queue], 10, 0.8) == []

    run(loop, body())


def test_nack_with_requeue_hands_the_message_back_without_counting_a_delivery(
    loop: asyncio.AbstractEventLoop, broker: Broker, queue: str
) -> None:
    async def body() -> None:
        sent = msg(queue, b"again", max_deliveries=1)
        await broker.publish([sent])
        first = await fetch_one(broker, queue)
        assert first.delivery_count == 1
        assert await first.nack(requeue=True)
        again = await fetch_one(broker, queue)
        assert (again.id, again.body, again.delivery_count) == (sent.id, b"again", 1)
        assert await again.ack()

    run(loop, body())


def test_nack_without_requeue_drops_the_message(
    loop: asyncio.AbstractEventLoop, broker: Broker, queue: str
) -> None:
    async def body() -> None:
        await broker.publish([msg(queue)])
        assert await (await fetch_one(broker, queue)).nack(requeue=False)
        assert await broker.fetch([queue], 10, 0) == []

    run(loop, body())


def test_a_delivery_whose_lease_expires_is_redelivered_with_a_higher_count(
    loop: asyncio.AbstractEventLoop, make_broker: MakeBroker, queue: str
) -> None:
    broker = make_broker(lease=LEASE)

    async def body() -> None:
        sent = msg(queue, b"lost", max_deliveries=3)
        await broker.publish([sent])
        first = await fetch_one(broker, queue)
        assert first.lease == pytest.approx(LEASE)
        assert await broker.fetch([queue], 1, 0) == []  # still leased
        again = await fetch_one(broker, queue, timeout=3.0)
        assert (again.id, again.body, again.delivery_count) == (sent.id, b"lost", 2)
        assert await again.ack()

    run(loop, body())


def test_touch_keeps_the_lease_alive(
    loop: asyncio.AbstractEventLoop, make_broker: MakeBroker, queue: str
) -> None:
    broker = make_broker(lease=LEASE)

    async def body() -> None:
        await broker.publish([msg(queue, max_deliveries=5)])
        held = await fetch_one(broker, queue)
        started = time.monotonic()
        # Each empty fetch is the wait; together they outlast the lease twice over.
        while time.monotonic() - started < 2 * LEASE:
            assert await broker.fetch([queue], 1, LEASE / 3) == []
            assert await held.touch()
        assert await held.ack()

    run(loop, body())


def test_a_stale_delivery_can_no_longer_settle_after_its_lease_was_lost(
    loop: asyncio.AbstractEventLoop, make_broker: MakeBroker, queue: str
) -> None:
    broker = make_broker(lease=LEASE)

    async def body() -> None:
        await broker.publish([msg(queue, b"fenced", max_deliveries=5)])
        stale = await fetch_one(broker, queue)
        fresh = await fetch_one(broker, queue, timeout=3.0)
        assert fresh.delivery_count == 2
        assert await stale.ack() is False
        assert await stale.nack(requeue=True) is False
        assert await stale.nack(requeue=False) is False
        assert await stale.retry(b"other", 0.0) is False
        assert await stale.dead_letter("rejected", "stale") is False
        assert await stale.touch() is False
        # None of that touched the message: the current holder still owns it.
        assert await broker.fetch([queue], 1, 0) == []
        if isinstance(broker, BrokerAdmin):
            assert await broker.dead_letters(queue) == []
        assert await fresh.ack()

    run(loop, body())


def test_a_message_past_max_deliveries_is_dead_lettered_as_worker_lost(
    loop: asyncio.AbstractEventLoop, make_broker: MakeBroker, queue: str
) -> None:
    broker = make_broker(lease=LEASE)

    async def body() -> None:
        sent = msg(queue, b"doomed", max_deliveries=2)
        await broker.publish([sent])
        assert (await fetch_one(broker, queue)).delivery_count == 1
        assert (await fetch_one(broker, queue, timeout=3.0)).delivery_count == 2
        # The second lease runs out during this fetch; there is no third delivery.
        assert await broker.fetch([queue], 1, 2 * LEASE) == []
        if isinstance(broker, BrokerAdmin):
            (dead,) = await broker.dead_letters(queue)
            assert (dead.id, dead.body, dead.reason) == (sent.id, b"doomed", "worker_lost")
            assert dead.delivery_count == 2

    run(loop, body())


def test_a_message_whose_deliveries_ran_out_is_reported_in_a_fetch_result_exactly_once(
    loop: asyncio.AbstractEventLoop, make_broker: MakeBroker, queue: str
) -> None:
    broker = make_broker(lease=LEASE)

    async def body() -> None:
        sent = msg(queue, b"doomed", max_deliveries=1)
        kept = msg(queue, b"kept", max_deliveries=1)
        await broker.publish([sent])
        first = await broker.fetch([queue], 1, 2.0)
        assert [d.id for d in first] == [sent.id]
        assert first.lost == []
        # The lease runs out while a later fetch waits; the next message is still served.
        await broker.publish([kept])
        got: list[Delivery] = []
        lost: list[DeadLetter] = []
        deadline = time.monotonic() + 3.0
        while not got and time.monotonic() < deadline:
            result = await broker.fetch([queue], 1, 3.0)
            got += result
            lost += result.lost
        assert [d.id for d in got] == [kept.id]
        assert await got[0].ack()
        deadline = time.monotonic() + 3 * LEASE + 2.0
        while not lost and time.monotonic() < deadline:
            result = await broker.fetch([queue], 1, LEASE)
            assert result == []
            lost += result.lost
        assert [(d.id, d.queue, d.body, d.reason) for d in lost] == [
            (sent.id, queue, b"doomed", "worker_lost")
        ]
        assert lost[0].delivery_count == 1
        again = await broker.fetch([queue], 1, 2 * LEASE)
        assert (again, again.lost) == ([], [])

    run(loop, body())


def test_a_lease_can_be_renewed_right_after_the_fetch_and_reports_its_length(
    loop: asyncio.AbstractEventLoop, make_broker: MakeBroker, queue: str
) -> None:
    broker = make_broker(lease=LEASE)

    async def body() -> None:
        await broker.publish([msg(queue, max_deliveries=5)])
        held = await fetch_one(broker, queue)
        assert held.lease == pytest.approx(LEASE)
        assert await held.touch()  # the first renewal comes early, before any wait
        started = time.monotonic()
        while time.monotonic() - started < 2 * LEASE:
            assert await broker.fetch([queue], 1, LEASE / 3) == []
            assert await held.touch()
        assert await held.ack()

    run(loop, body())


def test_retry_replaces_the_body_delays_it_and_starts_a_fresh_count(
    loop: asyncio.AbstractEventLoop, make_broker: MakeBroker, queue: str
) -> None:
    broker = make_broker(lease=LEASE)

    async def body() -> None:
        sent = msg(queue, b"attempt-1", max_deliveries=1)
        await broker.publish([sent])
        first = await fetch_one(broker, queue)
        retried = time.monotonic()
        assert await first.retry(b"attempt-2", 0.3, max_deliveries=2)
        early = await broker.fetch([queue], 1, 0)
        if early:  # only if the retry and this look took the whole delay (a loaded machine)
            assert time.monotonic() - retried >= 0.29, "delivered before its delay"
        second = early[0] if early else await fetch_one(broker, queue, timeout=3.0)
        assert (second.id, second.body, second.delivery_count) == (sent.id, b"attempt-2", 1)
        # The new budget of two deliveries allows one redelivery after a lost lease.
        third = await fetch_one(broker, queue, timeout=3.0)
        assert (third.body, third.delivery_count) == (b"attempt-2", 2)
        assert await third.ack()

    run(loop, body())


def test_retry_without_delay_is_delivered_again_at_once(
    loop: asyncio.AbstractEventLoop, broker: Broker, queue: str
) -> None:
    async def body() -> None:
        await broker.publish([msg(queue, b"v1")])
        assert await (await fetch_one(broker, queue)).retry(b"v2", 0.0)
        assert (await fetch_one(broker, queue)).body == b"v2"

    run(loop, body())


def test_dead_letters_keep_reason_error_and_body_and_replay_publishes_them_again(
    loop: asyncio.AbstractEventLoop, broker: Broker, queue: str
) -> None:
    sent = [msg(queue, f"dead-{i}", priority=i, max_deliveries=2) for i in range(3)]

    async def body() -> None:
        await broker.publish(sent)
        for got in await drain(broker, [queue], 3):
            assert await got.dead_letter("rejected", f"error of {got.body.decode()}")
        assert await broker.fetch([queue], 10, 0) == []
        admin = admin_of(broker)
        dead = await admin.dead_letters(queue)
        assert {d.id for d in dead} == {m.id for m in sent}
        for letter in dead:
            assert letter.queue == queue
            assert letter.reason == "rejected"
            assert letter.error == f"error of {letter.body.decode()}"
            assert letter.delivery_count == 1
        assert len(await admin.dead_letters(queue, limit=2)) == 2

        assert await admin.replay(queue, [sent[1].id]) == 1
        again = await fetch_one(broker, queue)
        assert (again.id, again.body, again.priority) == (sent[1].id, b"dead-1", 1)
        assert await again.ack()
        assert {d.id for d in await admin.dead_letters(queue)} == {sent[0].id, sent[2].id}

        assert await admin.replay(queue) == 2
        rest = await drain(broker, [queue], 2)
        assert [d.body for d in rest] == [b"dead-2", b"dead-0"]  # priority order
        assert await admin.dead_letters(queue) == []
        assert await admin.replay(queue) == 0

    run(loop, body())


# -- bounded queues and cancel ---------------------------------------------------------


def test_a_bounded_queue_raises_queue_full_and_publishes_nothing_of_the_batch(
    loop: asyncio.AbstractEventLoop, broker: Broker, queue: str
) -> None:
    async def body() -> None:
        await broker.declare(queue, max_length=3)
        kept = [msg(queue, "a"), msg(queue, "b")]
        await broker.publish(kept)
        with pytest.raises(QueueFull):
            await broker.publish([msg(queue, "c"), msg(queue, "d")])
        last = msg(queue, "c", eta=time.time() + 60)  # scheduled messages count too
        await broker.publish([last])
        with pytest.raises(QueueFull):
            await broker.publish([msg(queue, "e")])
        if isinstance(broker, BrokerAdmin):
            depth = await broker.depth(queue)
            assert (depth["ready"], depth["scheduled"]) == (2, 1)
        got = await drain(broker, [queue], 2)
        assert bodies(got) == [b"a", b"b"]
        assert await broker.fetch([queue], 10, 0) == []

    run(loop, body())


def test_declaring_a_queue_again_raises_lowers_or_lifts_its_bound(
    loop: asyncio.AbstractEventLoop, broker: Broker, queue: str
) -> None:
    async def body() -> None:
        await broker.declare(queue, max_length=1)
        await broker.declare(queue, max_length=1)  # the same again changes nothing
        await broker.publish([msg(queue, "a")])
        with pytest.raises(QueueFull):
            await broker.publish([msg(queue, "b")])
        await broker.declare(queue, max_length=2)
        await broker.publish([msg(queue, "b")])
        with pytest.raises(QueueFull):
            await broker.publish([msg(queue, "c")])
        await broker.declare(queue)  # no bound
        await broker.publish([msg(queue, "c"), msg(queue, "d")])
        await broker.declare(queue, max_length=2)  # under what is queued: no more for now
        with pytest.raises(QueueFull):
            await broker.publish([msg(queue, "e")])
        assert bodies(await drain(broker, [queue], 4)) == [b"a", b"b", b"c", b"d"]

    run(loop, body())


def test_a_batch_spanning_queues_is_refused_whole_when_one_queue_is_full(
    loop: asyncio.AbstractEventLoop, broker: Broker, queue: str
) -> None:
    roomy, tight = f"{queue}-roomy", f"{queue}-tight"

    async def body() -> None:
        await broker.declare(tight, max_length=1)
        await broker.publish([msg(tight, "t1")])
        with pytest.raises(QueueFull):
            await broker.publish([msg(roomy, "r1"), msg(tight, "t2")])
        assert await broker.fetch([roomy], 10, 0) == []
        assert bodies(await drain(broker, [tight], 1)) == [b"t1"]

    run(loop, body())


def test_cancel_removes_a_ready_and_a_scheduled_message(
    loop: asyncio.AbstractEventLoop, broker: Broker, queue: str
) -> None:
    ready, scheduled, other = msg(queue, "r"), msg(queue, "s", eta=time.time() + 0.3), msg(queue)

    async def body() -> None:
        await broker.publish([ready, scheduled, other])
        assert await broker.cancel(ready.id, queue)
        assert await broker.cancel(scheduled.id, queue)
        assert await broker.cancel(uuid.uuid4().hex, queue) is False
        assert await broker.cancel(ready.id, queue) is False
        got = await fetch_one(broker, queue)
        assert got.id == other.id
        assert await got.ack()
        # Past the cancelled eta nothing shows up.
        assert await broker.fetch([queue], 10, 0.5) == []

    run(loop, body())


# -- admin -----------------------------------------------------------------------------


def test_pause_stops_delivery_and_resume_starts_it_again(
    loop: asyncio.AbstractEventLoop, broker: Broker, queue: str
) -> None:
    async def body() -> None:
        admin = admin_of(broker)
        await admin.pause(queue)
        await broker.publish([msg(queue, b"held")])
        assert await broker.fetch([queue], 10, 0.2) == []
        waiting = asyncio.ensure_future(broker.fetch([queue], 10, 10.0))
        done, _ = await asyncio.wait({waiting}, timeout=0.1)
        assert not done
        started = time.monotonic()
        await admin.resume(queue)
        assert bodies(await asyncio.wait_for(waiting, 10.0)) == [b"held"]
        assert time.monotonic() - started < 2.0

    run(loop, body())


def test_a_declared_queue_is_known_and_its_pause_is_seen(
    loop: asyncio.AbstractEventLoop, broker: Broker, queue: str
) -> None:
    # What the operations API asks of each queue on a broker that cannot list them.
    never = f"{queue}-never"

    async def body() -> None:
        admin = admin_of(broker)
        await broker.declare(queue)  # as a sending app and a worker do
        await broker.publish([msg(queue, b"x")])
        assert await admin.has_queue(queue)
        assert not await admin.has_queue(never)
        await admin.pause(queue)
        assert await admin.paused_of([queue, never]) == {queue}
        await admin.resume(queue)
        assert await admin.paused_of([queue, never]) == set()

    run(loop, body())


def test_pausing_one_queue_leaves_the_others_flowing(
    loop: asyncio.AbstractEventLoop, broker: Broker, queue: str
) -> None:
    other = f"{queue}-other"

    async def body() -> None:
        admin = admin_of(broker)
        await admin.pause(queue)
        await broker.publish([msg(queue, "paused"), msg(other, "flowing")])
        assert bodies(await drain(broker, [queue, other], 1)) == [b"flowing"]
        await admin.resume(queue)

    run(loop, body())


def test_purge_drops_ready_and_scheduled_messages_and_counts_them(
    loop: asyncio.AbstractEventLoop, broker: Broker, queue: str
) -> None:
    async def body() -> None:
        admin = admin_of(broker)
        await broker.publish([msg(queue, "held")])
        held = await fetch_one(broker, queue)
        await broker.publish([msg(queue, str(i)) for i in range(3)])
        await broker.publish([msg(queue, eta=time.time() + 60) for _ in range(2)])
        assert await admin.purge(queue) == 5
        depth = await admin.depth(queue)
        assert (depth["ready"], depth["scheduled"], depth["inflight"]) == (0, 0, 1)
        assert await broker.fetch([queue], 10, 0) == []
        assert await held.ack()
        assert await admin.purge(queue) == 0

    run(loop, body())


def test_an_operators_purge_closes_records_before_it_drops_their_messages(
    loop: asyncio.AbstractEventLoop, broker: Broker, queue: str
) -> None:
    """A broker that does not write the result store's records itself hands a purge's ids
    to ``closing.close`` before it drops them: a close that fails drops nothing, so no
    record is left saying queued for a message that is gone."""
    closed: list[str] = []
    fail = True

    async def close(ids: list[str]) -> None:
        if fail:
            raise BrokerError("the result store stopped answering")
        closed.extend(ids)

    closing = RecordClose({"status": "cancelled"}, None, close)

    async def body() -> None:
        nonlocal fail
        admin = admin_of(broker)
        sent = [msg(queue, str(i)) for i in range(3)]
        later = msg(queue, eta=time.time() + 60)
        await broker.publish([*sent, later])
        with pytest.raises(BrokerError, match="result store stopped answering"):
            await admin.purge_batch_closing(queue, scheduled=True, limit=1000, closing=closing)
        want = {"ready": 3, "scheduled": 1, "inflight": 0, "dead": 0}
        assert await settled_depth(admin, queue, want) == want
        fail = False
        purged = await admin.purge_batch_closing(queue, scheduled=True, limit=1000, closing=closing)
        assert sorted(purged) == sorted(m.id for m in [*sent, later])
        assert sorted(closed) == sorted(purged)
        assert await broker.fetch([queue], 10, 0) == []

    run(loop, body())


def test_depth_counts_ready_scheduled_inflight_and_dead(
    loop: asyncio.AbstractEventLoop, broker: Broker, queue: str
) -> None:
    async def body() -> None:
        admin = admin_of(broker)
        assert await admin.depth(queue) == {"ready": 0, "scheduled": 0, "inflight": 0, "dead": 0}
        await broker.publish([msg(queue, str(i)) for i in range(2)])
        first, second = await drain(broker, [queue], 2)
        assert await second.dead_letter("rejected")
        await broker.publish([msg(queue, str(i)) for i in range(3)])
        await broker.publish([msg(queue, eta=time.time() + 60)])
        want = {"ready": 3, "scheduled": 1, "inflight": 1, "dead": 1}
        assert await settled_depth(admin, queue, want) == want
        assert await first.ack()

    run(loop, body())


def test_peek_shows_bodies_in_delivery_order_without_removing_them(
    loop: asyncio.AbstractEventLoop, broker: Broker, queue: str
) -> None:
    async def body() -> None:
        admin = admin_of(broker)
        assert await admin.peek(queue) == []
        await broker.publish(
            [
                msg(queue, "a", priority=1),
                msg(queue, "b", priority=5),
                msg(queue, "c", priority=1),
                msg(queue, "later", eta=time.time() + 60),
            ]
        )
        assert await admin.peek(queue) == [b"b", b"a", b"c"]
        assert await admin.peek(queue, limit=2) == [b"b", b"a"]
        assert bodies(await drain(broker, [queue], 3)) == [b"b", b"a", b"c"]
        assert await admin.peek(queue) == []

    run(loop, body())


# -- control channel and lifecycle -----------------------------------------------------


def test_control_messages_reach_every_reader(
    loop: asyncio.AbstractEventLoop, broker: Broker
) -> None:
    if not broker.capabilities.control:
        pytest.skip("no control channel")
    commands = [{"cmd": "cancel", "id": "t-1"}, {"cmd": "cancel", "id": "t-2"}]

    async def reader(subscribed: asyncio.Event) -> list[dict[str, Any]]:
        await broker.control_messages(0)  # the first call subscribes this reader
        subscribed.set()
        got: list[dict[str, Any]] = []
        deadline = time.monotonic() + 5.0
        while len(got) < len(commands) and time.monotonic() < deadline:
            got.extend(await broker.control_messages(deadline - time.monotonic()))
        return got

    async def body() -> None:
        ready = [asyncio.Event(), asyncio.Event()]
        readers = [asyncio.ensure_future(reader(event)) for event in ready]
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in ready)), 5.0)
        for command in commands:
            await broker.send_control(command)
        assert await asyncio.gather(*readers) == [commands, commands]

    run(loop, body())


def test_close_is_idempotent(loop: asyncio.AbstractEventLoop, broker: Broker) -> None:
    async def body() -> None:
        await broker.close()
        await broker.close()

    run(loop, body())
