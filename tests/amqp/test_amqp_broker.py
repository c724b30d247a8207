"""What the RabbitMQ broker adds to the contract suite: the delay cascade, publisher
confirms, fencing by connection generation, lost deliveries counted through the
``redelivered`` flag, heartbeats, pause seen by other processes, and apps without a
result store."""

from __future__ import annotations

import asyncio
import contextlib
import os
import struct
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import amqp
import pytest

from taskflow import App
from taskflow.brokers import _kombu_topology as topo
from taskflow.brokers import broker_from_url
from taskflow.brokers._kombu_io import IoThread
from taskflow.brokers.base import Message, RecordClose, StoppedPartWay
from taskflow.brokers.kombu import HEADER_ROOM, MAX_MESSAGE_SIZE, KombuBroker
from taskflow.errors import BrokerError, ConfigError, PayloadError
from tests.amqp import amqp_helpers as h
from tests.contract.backend_amqp import delete_topology

YEAR_MS = 365 * 86400 * 1000


def msg(queue: str, body: bytes = b"x", **kw: object) -> Message:
    return Message(id=uuid.uuid4().hex, queue=queue, body=body, **kw)  # type: ignore[arg-type]


# -- reading deliveries, without a server ---------------------------------------------------

_TABLES = [
    {},
    {"tf-id": "abc", "tf-max": 3, "tf-count": 0, "tf-task": "shop.send_email"},
    {"tf-due": 2**40, "tf-big": -(2**40), "flag": True, "off": False, "é": "ü\U0001f600"},
    # Types this broker does not write: the whole table is py-amqp's to read.
    {"tf-id": "x", "x-death": [{"count": 1, "reason": "expired", "queue": "q"}], "f": 1.5},
    {"none": None, "nested": {"a": 1}},
    {"raw": b"\xff\xfe", "n": -1},  # not UTF-8: bytes, as py-amqp gives it
]


@pytest.mark.parametrize("headers", _TABLES)
def test_headers_read_off_the_wire_are_what_py_amqp_reads(headers: dict[str, object]) -> None:
    from taskflow.brokers import _kombu_io

    data = b"\x00" * 3 + amqp.serialization.dumps("F", [headers])  # at an offset
    (expected,), end = amqp.serialization.loads("F", data, 3)
    assert _kombu_io._table(data, 3) == (expected, end)


@pytest.mark.parametrize("priority", [None, 0, 9])
@pytest.mark.parametrize("headers", [None, *_TABLES[:2]])
def test_priority_and_headers_read_off_the_wire_are_what_py_amqp_reads(
    priority: int | None, headers: dict[str, object] | None
) -> None:
    from taskflow.brokers import _kombu_io

    props: dict[str, object] = {"delivery_mode": 2, "message_id": "m1"}
    props["content_type"] = "application/octet-stream"
    if priority is not None:
        props["priority"] = priority
    if headers is not None:
        props["application_headers"] = headers
    data = amqp.Message(b"body", **props)._serialize_properties()
    (flags,) = struct.unpack_from(">H", data, 0)
    assert _kombu_io._properties(data, 2, flags) == (priority or 0, headers or {})


# -- the cascade, without a server ------------------------------------------------------


@pytest.mark.parametrize("delay", [1, 200, 1000, 86400 * 1000 + 7, 3 * YEAR_MS + 12345])
def test_the_levels_of_a_delay_add_up_to_it_largest_first(delay: int) -> None:
    path = topo.cascade(delay)
    assert sum(topo.level_ttl(level) for level in path) == delay
    bits = [int(level) for level in path if not level.startswith("t")]
    assert bits == sorted(set(bits), reverse=True)  # each bit level once, largest first
    tops = [level for level in path if level.startswith("t")]
    assert path[: len(tops)] == tops == [f"t{i}" for i in range(len(tops))]


def test_a_delay_beyond_the_largest_is_held_for_the_largest() -> None:
    path = topo.cascade(topo.MAX_DELAY_MS * 2)
    assert sum(topo.level_ttl(level) for level in path) == topo.MAX_DELAY_MS
    assert topo.MAX_DELAY_MS > 8 * YEAR_MS


def test_routing_headers_name_each_next_level_and_the_work_queue_last() -> None:
    names = topo.Names("p")
    key, headers = names.route("q", ["t0", "7", "3"])
    assert key == "p.delay.q.t0"
    assert headers == {"tf-q": "q", "tf-at0": "7", "tf-a7": "3", "tf-a3": "w"}
    assert names.route("q", []) == ("p.q.q", {})


# -- URLs and options ---------------------------------------------------------------------


def test_amqp_urls_build_a_kombu_broker_with_their_options_and_a_masked_password() -> None:
    broker = broker_from_url("amqp://app:s3cret@127.0.0.1:5672?prefix=shop&lease=5&vhost=v1")
    assert isinstance(broker, KombuBroker)
    assert (broker.prefix, broker.lease) == ("shop", 5.0)
    assert "s3cret" not in repr(broker) and "***" in repr(broker)
    assert isinstance(broker_from_url("AMQPS://h:5671"), KombuBroker)


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("amqp://h?bogus=1", "unknown option 'bogus'"),
        ("amqp://h?lease=0", "lease=0"),
        ("amqp://h?lease=3600", "shorter than the server's consumer_timeout"),
        ("amqp://h/a/b", "the path is the virtual host"),
    ],
)
def test_a_wrong_amqp_url_is_a_config_error(url: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        broker_from_url(url)


def test_an_unreachable_server_is_a_broker_error_naming_the_masked_url(
    loop: asyncio.AbstractEventLoop,
) -> None:
    broker = KombuBroker("amqp://app:s3cret@127.0.0.1:1", connect_timeout=1.0)
    started = time.monotonic()
    with pytest.raises(BrokerError) as info:
        run(loop, broker.connect())
    assert time.monotonic() - started < 5.0
    assert "127.0.0.1:1" in str(info.value) and "s3cret" not in str(info.value)
    run(loop, broker.close())


def test_amqps_speaks_tls_so_a_plain_port_refuses_the_handshake(
    loop: asyncio.AbstractEventLoop,
) -> None:
    h.require_service("rabbitmq", "127.0.0.1", 5672)
    broker = KombuBroker("amqps://guest:guest@127.0.0.1:5672", connect_timeout=2.0)
    with pytest.raises(BrokerError, match="cannot connect"):
        run(loop, broker.connect())
    run(loop, broker.close())


# -- against RabbitMQ ---------------------------------------------------------------------


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    lp = asyncio.new_event_loop()
    yield lp
    lp.run_until_complete(lp.shutdown_default_executor())
    lp.close()


@pytest.fixture
def prefix() -> Iterator[str]:
    h.require_service("rabbitmq", "127.0.0.1", 5672)
    name = f"tfamqp{uuid.uuid4().hex[:10]}"
    yield name
    delete_topology(name, {"q", "q2"})


def run(loop: asyncio.AbstractEventLoop, coro: object) -> object:
    return loop.run_until_complete(asyncio.wait_for(coro, 60))  # type: ignore[arg-type]


def broker_on(loop: asyncio.AbstractEventLoop, prefix: str, **kw: object) -> KombuBroker:
    broker = KombuBroker(h.AMQP, prefix=prefix, **kw)  # type: ignore[arg-type]
    run(loop, broker.connect())
    return broker


@pytest.mark.parametrize("action", ["cancel", "purge"])
@pytest.mark.parametrize("moves_to", ["work", "a lower level"])
def test_a_sweep_finds_a_scheduled_message_that_moves_on_while_it_runs(
    loop: asyncio.AbstractEventLoop,
    prefix: str,
    monkeypatch: pytest.MonkeyPatch,
    action: str,
    moves_to: str,
) -> None:
    from taskflow.brokers import _kombu_admin

    broker = broker_on(loop, prefix)
    real = _kombu_admin._sweep
    moved: list[str] = []

    def sweep(io: Any, name: str, queue: str, decide: Any, *, kind: str, **kw: Any) -> Any:
        if name == io.names.work(queue) or moved:
            return real(io, name, queue, decide, kind=kind, **kw)
        # What RabbitMQ does when the message's level expires while the sweep runs: the
        # message leaves it for the work queue, or for the level of its next bit (here a
        # second from now: below the hour's level, which was swept first).
        taken = real(io, name, queue, lambda _raw: "drop", kind=kind)
        due = None if moves_to == "work" else time.time() + 1.0
        for raw in taken:
            kept = {k: v for k, v in raw.headers.items() if k in _kombu_admin._KEPT}
            io.send(queue, raw.id, raw.body, raw.priority, kept, due)
            moved.append(raw.id)
        return []  # gone before this sweep reached it

    monkeypatch.setattr(_kombu_admin, "_sweep", sweep)

    async def body() -> None:
        scheduled = msg("q", b"s", eta=time.time() + 3600)
        await broker.publish([scheduled])
        if action == "cancel":
            assert await broker.cancel(scheduled.id, "q")
        else:
            assert await broker.purge_ids("q") == [scheduled.id]
        assert moved == [scheduled.id]  # it was on the move during the sweep
        assert await broker.fetch(["q"], 10, 1.5) == []  # past the second: nothing comes
        await broker.close()

    run(loop, body())


def test_a_long_delay_waits_in_rabbitmq_and_never_holds_up_a_short_one(
    loop: asyncio.AbstractEventLoop, prefix: str
) -> None:
    broker = broker_on(loop, prefix)

    async def body() -> None:
        far = msg("q", b"far", eta=time.time() + 3 * 365 * 86400)
        await broker.publish([far])
        started = time.monotonic()
        await broker.publish([msg("q", b"soon", eta=time.time() + 0.3)])
        got = await broker.fetch(["q"], 10, 5.0)
        assert [d.body for d in got] == [b"soon"]
        assert 0.25 <= time.monotonic() - started < 2.0
        assert await got[0].ack()
        depth = await broker.depth("q")
        assert (depth["ready"], depth["scheduled"]) == (0, 1)
        # Three years: 44 top levels of 2**31 ms, then the bits of the rest.
        name = broker.names.level("q", "t0")
        assert await broker.io.call(lambda io: io.count(name)) == 1
        await broker.close()

    run(loop, body())


def test_a_publish_the_server_refuses_raises_broker_error(
    loop: asyncio.AbstractEventLoop, prefix: str
) -> None:
    broker = broker_on(loop, prefix)
    policy = f"{prefix}-full"
    run(loop, broker.declare("q"))
    h.rabbitmqctl(
        "set_policy",
        policy,
        f"^{prefix}\\.q\\.q$",
        '{"max-length": 0, "overflow": "reject-publish"}',
        "--apply-to",
        "queues",
    )
    try:

        async def body() -> None:
            sent = msg("q")
            deadline = time.monotonic() + 10
            while True:  # the policy reaches the queue process a moment later
                try:
                    await broker.publish([sent])
                except BrokerError as exc:
                    assert sent.id in str(exc) and "nack" in str(exc)
                    break
                assert time.monotonic() < deadline, "the server never refused"
                got = await broker.fetch(["q"], 10, 0)
                for delivery in got:
                    await delivery.ack()

        run(loop, body())
    finally:
        h.rabbitmqctl("clear_policy", policy)
        run(loop, broker.close())


def _reconnected(loop: asyncio.AbstractEventLoop, broker: KombuBroker, prefix: str) -> None:
    gen = broker.io.gen
    assert h.close_connections(prefix, os.getpid()) == 1
    deadline = time.monotonic() + 20
    while broker.io.gen == gen or broker.io.conn is None:
        assert time.monotonic() < deadline, "the broker did not reconnect"
        # A fetch that fails while the connection is down is the wait.
        with contextlib.suppress(BrokerError):
            run(loop, broker.fetch(["q2"], 1, 0.1))


def test_a_stale_ack_after_a_reconnect_returns_false_and_the_message_comes_back_counted(
    loop: asyncio.AbstractEventLoop, prefix: str
) -> None:
    broker = broker_on(loop, prefix)
    sent = msg("q", b"held", max_deliveries=3)
    run(loop, broker.publish([sent]))
    (stale,) = run(loop, broker.fetch(["q"], 1, 2.0))  # type: ignore[misc]
    _reconnected(loop, broker, prefix)
    assert run(loop, stale.ack()) is False  # never sent on the new channel
    (again,) = run(loop, broker.fetch(["q"], 1, 5.0))  # type: ignore[misc]
    assert (again.id, again.body, again.delivery_count) == (sent.id, b"held", 2)
    assert run(loop, again.ack()) is True
    run(loop, broker.close())


def test_each_lost_holder_counts_until_the_message_is_dead_lettered_worker_lost(
    loop: asyncio.AbstractEventLoop, prefix: str
) -> None:
    broker = broker_on(loop, prefix)
    sent = msg("q", b"doomed", max_deliveries=2)
    run(loop, broker.publish([sent]))
    (first,) = run(loop, broker.fetch(["q"], 1, 2.0))  # type: ignore[misc]
    assert first.delivery_count == 1
    _reconnected(loop, broker, prefix)
    (second,) = run(loop, broker.fetch(["q"], 1, 5.0))  # type: ignore[misc]
    assert (second.id, second.delivery_count) == (sent.id, 2)
    _reconnected(loop, broker, prefix)  # the second holder is lost too: no third delivery
    lost = []
    deadline = time.monotonic() + 10
    while not lost and time.monotonic() < deadline:
        result = run(loop, broker.fetch(["q"], 1, 0.5))
        assert result == []
        lost += result.lost  # type: ignore[attr-defined]
    assert [(d.id, d.reason, d.delivery_count) for d in lost] == [(sent.id, "worker_lost", 2)]
    (dead,) = run(loop, broker.dead_letters("q"))  # type: ignore[misc]
    assert (dead.id, dead.reason, dead.body) == (sent.id, "worker_lost", b"doomed")
    run(loop, broker.close())


def test_no_x_death_header_survives_into_a_dead_letter_or_a_replay(
    loop: asyncio.AbstractEventLoop, prefix: str
) -> None:
    broker = broker_on(loop, prefix)

    async def body() -> None:
        sent = msg("q", b"delayed", eta=time.time() + 0.05)  # dead-lettered by TTL on its way
        await broker.publish([sent])
        (got,) = await broker.fetch(["q"], 1, 5.0)
        assert await got.dead_letter("rejected", "no")
        assert await broker.replay("q") == 1
        await broker.close()

    def headers_of(queue: str) -> dict[str, object]:
        conn = amqp.Connection("127.0.0.1:5672", userid="guest", password="guest")
        conn.connect()
        try:
            message = conn.channel().basic_get(queue, no_ack=True)
            assert message is not None
            return dict(message.properties.get("application_headers") or {})
        finally:
            conn.close()

    run(loop, body())
    headers = headers_of(topo.Names(prefix).work("q"))
    assert headers["tf-id"] and not [k for k in headers if k.startswith("x-")]
    assert "tf-reason" not in headers


def _second_call_fails(
    monkeypatch: pytest.MonkeyPatch, owner: type, name: str
) -> list[tuple[Any, ...]]:
    """``owner.<name>`` raises BrokerError at its second call (a server that stopped
    answering part-way); the arguments of each call, in order."""
    real = getattr(owner, name)
    calls: list[tuple[Any, ...]] = []

    def patched(self: Any, *args: Any, **kw: Any) -> Any:
        calls.append(args)
        if len(calls) == 2:
            raise BrokerError("the server stopped answering")
        return real(self, *args, **kw)

    monkeypatch.setattr(owner, name, patched)
    return calls


async def _dead_lettered(broker: KombuBroker, count: int) -> list[Message]:
    """``count`` messages published to ``q``, taken and dead-lettered."""
    sent = [msg("q", f"b{i}".encode()) for i in range(count)]
    await broker.publish(sent)
    taken: list[Any] = []
    while len(taken) < count:
        taken += await broker.fetch(["q"], count, 5.0)
    for delivery in taken:
        assert await delivery.dead_letter("failed", "no")
    return sent


def test_a_requeue_stopped_part_way_names_what_it_sent_and_keeps_the_rest_dead(
    loop: asyncio.AbstractEventLoop, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Dead letters move back one at a time (send, then ack the dead letter): the replay
    that called must learn which tasks are live again, or it takes their restart back
    and a worker settles them without running them."""
    broker = broker_on(loop, prefix)

    async def body() -> None:
        sent = await _dead_lettered(broker, 3)
        sends = _second_call_fails(monkeypatch, IoThread, "send")  # (queue, id, ...)
        again = [Message(m.id, "q", b"again") for m in sent]
        with pytest.raises(StoppedPartWay, match="stopped answering") as caught:
            await broker.requeue("q", again)
        monkeypatch.undo()
        first = sends[0][1]
        assert caught.value.done == (first,)
        dead = await broker.dead_letters("q")
        assert sorted(d.id for d in dead) == sorted(m.id for m in sent if m.id != first)
        (back,) = await broker.fetch(["q"], 3, 5.0)
        assert (back.id, back.body) == (first, b"again")
        assert await back.ack()
        await broker.close()

    run(loop, body())


def test_a_purge_stopped_part_way_names_what_it_dropped_and_keeps_the_rest(
    loop: asyncio.AbstractEventLoop, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A purge acks the messages it drops one at a time: the operator's purge must learn
    which ones went, to close their records; the others go back to the queue."""
    broker = broker_on(loop, prefix)

    async def body() -> None:
        sent = [msg("q", f"b{i}".encode()) for i in range(3)]
        await broker.publish(sent)
        _second_call_fails(monkeypatch, amqp.Channel, "basic_ack")
        with pytest.raises(StoppedPartWay, match="stopped answering") as caught:
            await broker.purge_ids("q")
        monkeypatch.undo()
        assert caught.value.done == (sent[0].id,)
        assert sorted(await broker.purge_ids("q")) == sorted(m.id for m in sent[1:])
        await broker.close()

    run(loop, body())


def test_a_purge_closes_each_groups_records_before_it_drops_the_group(
    loop: asyncio.AbstractEventLoop, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An operator's purge closes the records of what it takes before dropping it: a
    close that fails drops nothing (the group goes back as it was), so no record is left
    saying queued for a message that is gone."""
    import taskflow.brokers._kombu_admin as kombu_admin

    monkeypatch.setattr(kombu_admin, "_GROUP", 2)
    broker = broker_on(loop, prefix)
    closed: list[list[str]] = []
    fail = True

    async def close(ids: list[str]) -> None:
        closed.append(list(ids))
        if fail:
            raise BrokerError("the result store stopped answering")

    closing = RecordClose({"status": "cancelled"}, None, close)

    async def body() -> None:
        nonlocal fail
        ready = [msg("q", f"r{i}".encode()) for i in range(3)]
        later = msg("q", b"s", eta=time.time() + 3600)
        await broker.publish([*ready, later])
        with pytest.raises(BrokerError, match="result store stopped answering"):
            await broker.purge_batch_closing("q", scheduled=True, limit=100, closing=closing)
        assert closed == [[m.id for m in ready[:2]]]
        # Nothing was dropped: every ready message is still there.
        assert (await broker.depth("q"))["ready"] == 3
        fail = False
        closed.clear()
        purged = await broker.purge_batch_closing("q", scheduled=True, limit=100, closing=closing)
        assert sorted(purged) == sorted(m.id for m in [*ready, later])
        assert sorted(i for group in closed for i in group) == sorted(purged)
        assert all(len(group) <= 2 for group in closed)
        assert await broker.purge_ids("q") == []
        await broker.close()

    run(loop, body())


def test_a_discard_stopped_part_way_names_what_it_discarded_and_keeps_the_rest(
    loop: asyncio.AbstractEventLoop, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    broker = broker_on(loop, prefix)

    async def body() -> None:
        sent = await _dead_lettered(broker, 3)
        first = (await broker.dead_letters("q"))[0].id
        _second_call_fails(monkeypatch, amqp.Channel, "basic_ack")
        with pytest.raises(StoppedPartWay, match="stopped answering") as caught:
            await broker.discard_dead("q", [m.id for m in sent])
        monkeypatch.undo()
        assert caught.value.done == (first,)
        left = await broker.dead_letters("q")
        assert sorted(d.id for d in left) == sorted(m.id for m in sent if m.id != first)
        await broker.close()

    run(loop, body())


def test_heartbeats_keep_an_idle_connection_open(
    loop: asyncio.AbstractEventLoop, prefix: str
) -> None:
    broker = broker_on(loop, prefix, heartbeat=1.0)
    gen = broker.io.gen
    # Idle for four heartbeat intervals; the server closes a silent connection after two.
    assert run(loop, broker.fetch(["q"], 1, 4.0)) == []
    assert broker.io.gen == gen
    run(loop, broker.publish([msg("q", b"alive")]))
    assert [d.body for d in run(loop, broker.fetch(["q"], 1, 2.0))] == [b"alive"]  # type: ignore[attr-defined]
    run(loop, broker.close())


def test_a_pause_is_seen_by_a_broker_of_another_process_and_so_is_the_resume(
    loop: asyncio.AbstractEventLoop, prefix: str
) -> None:
    operator = broker_on(loop, prefix)
    run(loop, operator.pause("q"))
    worker = broker_on(loop, prefix)  # starts after the pause: the marker tells it

    async def body() -> None:
        await operator.publish([msg("q", b"held")])
        assert await worker.fetch(["q"], 10, 0.3) == []
        waiting = asyncio.ensure_future(worker.fetch(["q"], 10, 10.0))
        done, _ = await asyncio.wait({waiting}, timeout=0.2)
        assert not done
        await operator.resume("q")  # reaches the worker on the control exchange
        got = await asyncio.wait_for(waiting, 10.0)
        assert [d.body for d in got] == [b"held"]
        await got[0].ack()

    run(loop, body())
    run(loop, worker.close())
    run(loop, operator.close())


# -- consuming ----------------------------------------------------------------------------


def test_a_draining_fetch_is_fed_by_a_consumer_not_a_basic_get_per_message(
    loop: asyncio.AbstractEventLoop, prefix: str
) -> None:
    broker = broker_on(loop, prefix)
    sent = [msg("q", str(i).encode()) for i in range(60)]
    gets = 0

    async def body() -> None:
        nonlocal gets
        await broker.publish(sent)
        work = broker.io.work
        real_get = work.basic_get

        def counted(*args: object, **kw: object) -> object:
            nonlocal gets
            gets += 1
            return real_get(*args, **kw)

        work.basic_get = counted  # the channel of this connection only
        got = []
        while len(got) < len(sent):
            batch = await broker.fetch(["q"], 10, 5.0)
            assert batch, "a fetch came back empty while messages were ready"
            for delivery in batch:
                assert await delivery.ack()
            got += batch
        assert [d.body for d in got] == [m.body for m in sent]  # FIFO, each once
        assert all(d.delivery_count == 1 for d in got)

    run(loop, body())
    assert gets == 10  # the first batch only; the rest were pushed
    run(loop, broker.close())


def test_a_consumer_started_again_for_larger_fetches_has_its_deliveries_read_in_bulk(
    loop: asyncio.AbstractEventLoop, prefix: str
) -> None:
    broker = broker_on(loop, prefix)
    io = broker.io
    in_bulk = 0
    real_delivery = io._delivery

    def counted(*args: object) -> int:
        nonlocal in_bulk
        after: int = real_delivery(*args)  # type: ignore[arg-type]
        in_bulk += after > 0
        return after

    async def body() -> None:
        await broker.publish([msg("q", str(i).encode()) for i in range(60)])
        got = list(await broker.fetch(["q"], 2, 2.0))  # a consumer with a prefetch of 4
        while len(got) < 6:  # what it was pushed, then its own
            got += await broker.fetch(["q"], 2, 5.0)
        io._delivery = counted  # type: ignore[method-assign]
        while len(got) < 60:  # a consumer for fetches of 10 replaces it
            got += await broker.fetch(["q"], 10, 5.0)
        assert [d.body for d in got] == [str(i).encode() for i in range(60)]
        assert all([await d.ack() for d in got])

    run(loop, body())
    run(loop, broker.close())
    # Most are read off the wire by the thread, not by py-amqp: besides the basic.gets of a
    # backlog and what the old consumer still had on the wire when it was cancelled.
    assert in_bulk >= 30


def test_acks_made_together_each_get_their_own_answer(
    loop: asyncio.AbstractEventLoop, prefix: str
) -> None:
    broker = broker_on(loop, prefix)

    async def body() -> None:
        await broker.publish([msg("q", str(i).encode()) for i in range(3)])
        one, two, three = await broker.fetch(["q"], 3, 2.0)
        answers = await asyncio.gather(one.ack(), two.ack(), one.ack(), three.ack())
        assert answers == [True, True, False, True]  # the second ack of ``one`` is stale
        assert await broker.fetch(["q"], 3, 0.3) == []  # all three were acked

    run(loop, body())
    run(loop, broker.close())


def test_acks_made_together_never_ack_a_delivery_held_between_them(
    loop: asyncio.AbstractEventLoop, prefix: str
) -> None:
    broker = broker_on(loop, prefix)
    other = broker_on(loop, prefix)

    async def body() -> None:
        await broker.publish([msg("q", str(i).encode(), max_deliveries=3) for i in range(6)])
        got = await broker.fetch(["q"], 6, 2.0)
        assert [d.body for d in got] == [str(i).encode() for i in range(6)]
        d0, d1, d2, d3, d4, d5 = got
        # One batch with a gap: 2 is still running, 5 not acked yet.
        assert await asyncio.gather(d0.ack(), d1.ack(), d3.ack(), d4.ack()) == [True] * 4
        await broker.close()  # 2 and 5 were never acked: RabbitMQ takes them back
        back = await other.fetch(["q"], 10, 5.0)
        back += await other.fetch(["q"], 10, 0.5)
        assert sorted(d.body for d in back) == [b"2", b"5"]
        assert all(d.delivery_count == 2 for d in back)  # each a lost delivery
        for delivery in back:
            assert await delivery.ack()
        assert await other.fetch(["q"], 10, 0.3) == []

    run(loop, body())
    run(loop, other.close())


def test_a_delivery_whose_lease_ran_out_between_acked_ones_comes_back_once(
    loop: asyncio.AbstractEventLoop, prefix: str
) -> None:
    broker = broker_on(loop, prefix, lease=1.0)

    async def body() -> None:
        await broker.publish([msg("q", str(i).encode(), max_deliveries=3) for i in range(4)])
        d0, d1, d2, d3 = await broker.fetch(["q"], 4, 2.0)
        deadline = time.monotonic() + 10
        while broker.io.inflight("q") > 3:  # keep the others, let 2 run out
            assert time.monotonic() < deadline, "the lease never ran out"
            for delivery in (d0, d1, d3):
                assert await delivery.touch()
            await asyncio.sleep(0.1)
        assert await asyncio.gather(d0.ack(), d1.ack(), d3.ack()) == [True] * 3
        assert await d2.ack() is False  # handed back already
        (again,) = await broker.fetch(["q"], 10, 5.0)
        assert (again.body, again.delivery_count) == (b"2", 2)
        assert await again.ack()
        assert await broker.fetch(["q"], 10, 0.3) == []

    run(loop, body())
    run(loop, broker.close())


def test_a_later_higher_priority_overtakes_what_the_consumer_was_not_yet_pushed(
    loop: asyncio.AbstractEventLoop, prefix: str
) -> None:
    broker = broker_on(loop, prefix)

    async def body() -> None:
        low = [msg("q", f"low-{i}".encode(), priority=1) for i in range(40)]
        await broker.publish(low)
        first = await broker.fetch(["q"], 5, 2.0)  # starts a consumer: prefetch 10
        high = msg("q", b"high", priority=8)
        await broker.publish([high])
        rest = []
        while len(rest) < 36:
            rest += await broker.fetch(["q"], 5, 5.0)
        bodies = [d.body for d in first + rest]
        at = bodies.index(b"high")
        assert 5 <= at <= 5 + 10  # behind at most what was pushed to this process
        assert [b for b in bodies if b != b"high"] == [m.body for m in low]
        for delivery in first + rest:
            await delivery.ack()

    run(loop, body())
    run(loop, broker.close())


def test_messages_pushed_to_a_process_are_purged_and_the_fetched_ones_still_ack(
    loop: asyncio.AbstractEventLoop, prefix: str
) -> None:
    broker = broker_on(loop, prefix)

    async def body() -> None:
        await broker.publish([msg("q", str(i).encode()) for i in range(20)])
        got = await broker.fetch(["q"], 5, 2.0)
        assert len(got) == 5
        assert await broker.purge("q") == 15
        assert (await broker.depth("q"))["ready"] == 0
        assert [await d.ack() for d in got] == [True] * 5
        assert await broker.fetch(["q"], 5, 0.2) == []

    run(loop, body())
    run(loop, broker.close())


def test_a_process_that_stops_fetching_hands_its_pushed_messages_to_others_uncounted(
    loop: asyncio.AbstractEventLoop, prefix: str
) -> None:
    idle = broker_on(loop, prefix)
    other = broker_on(loop, prefix)
    sent = [msg("q", str(i).encode()) for i in range(20)]

    async def body() -> None:
        await idle.publish(sent)
        taken = await idle.fetch(["q"], 5, 2.0)  # its consumer is pushed up to 10 more
        got = []
        while len(got) < 15:  # the rest come once ``idle`` puts back what it was pushed
            batch = await other.fetch(["q"], 20, 10.0)
            assert batch, "the pushed messages never came back"
            got += batch
        assert sorted(d.id for d in taken + got) == sorted(m.id for m in sent)
        assert all(d.delivery_count == 1 for d in got)
        for delivery in taken + got:
            assert await delivery.ack()

    run(loop, body())
    run(loop, other.close())
    run(loop, idle.close())


# -- an app without a result store --------------------------------------------------------


def test_an_app_without_results_runs_fire_and_forget_and_refuses_to_wait(prefix: str) -> None:
    ran = threading.Event()
    with App("noresults", broker=f"{h.AMQP}?prefix={prefix}") as app:

        @app.task(name="q.mark")
        def mark() -> int:
            ran.set()
            return 1

        result = mark.apply_async(queue="q")
        with app.worker(queues=["q"]):
            assert ran.wait(20)
        for wait in (result.get, app.result(result.id).get):
            with pytest.raises(ConfigError) as info:
                wait(timeout=1)
            assert 'results="redis://' in str(info.value)
            assert "***" in str(info.value) or "guest:guest" not in str(info.value)


@pytest.mark.parametrize("limit", [None, 1_048_576])
def test_a_message_over_max_message_size_is_refused_before_the_server_sees_it(
    prefix: str, limit: int | None
) -> None:
    # RabbitMQ closes the connection of a publish over its max_message_size, and every
    # delivery the process holds goes back to the queue with it: refused here instead.
    query = f"prefix={prefix}" + ("" if limit is None else f"&max_message_size={limit}")
    size = (limit or MAX_MESSAGE_SIZE) - HEADER_ROOM + 1  # the argument alone is over
    with App("sizes", broker=f"{h.AMQP}?{query}") as app:

        @app.task(name="q.size", queue="q", store_result=False)
        def sized(data: str) -> int:
            return len(data)

        with pytest.raises(PayloadError) as info:
            sized.delay("s" * size)
        text = str(info.value)
        assert "q.size" in text and f"over the {size - 1:,} a message may have" in text
        assert "ssss" not in text
        assert app.kernel.call(app.broker.depth("q"))["ready"] == 0
        sized.delay("fits")  # on the same connection, which the server did not close
        assert app.kernel.call(app.broker.depth("q"))["ready"] == 1


def test_max_message_size_must_leave_room_for_headers() -> None:
    with pytest.raises(ConfigError, match="max_message_size must be a number of bytes over"):
        broker_from_url(f"{h.AMQP}?max_message_size=1000")


def test_a_closed_broker_refuses_calls_and_connects_again(
    loop: asyncio.AbstractEventLoop, prefix: str
) -> None:
    broker = broker_on(loop, prefix)
    run(loop, broker.close())
    with pytest.raises(BrokerError, match="not connected"):
        run(loop, broker.publish([msg("q")]))
    run(loop, broker.connect())
    run(loop, broker.publish([msg("q", b"again")]))
    assert [d.body for d in run(loop, broker.fetch(["q"], 1, 2.0))] == [b"again"]  # type: ignore[attr-defined]
    run(loop, broker.close())


def test_a_task_that_may_outlive_consumer_timeout_is_refused_at_worker_start(
    prefix: str,
) -> None:
    url = f"{h.AMQP}?prefix={prefix}&consumer_timeout=60"
    with App("bounded", broker=url, default_timeout=300.0) as app:

        @app.task(name="q.report")
        def report() -> None: ...

        with pytest.raises(ConfigError) as info:
            app.worker(queues=["q"]).start()
        assert "'q.report' has a 300s timeout" in str(info.value)
        assert "consumer_timeout" in str(info.value)
        assert "guest:guest" not in str(info.value)


def test_a_cluster_limit_on_rabbitmq_is_refused_at_worker_start(prefix: str) -> None:
    with App("limited", broker=f"{h.AMQP}?prefix={prefix}") as app:
        assert app.broker.limiter() is None

        @app.task(name="q.charge", cluster_concurrency=2)
        def charge() -> None: ...

        with pytest.raises(ConfigError, match=r"'q\.charge' declares a cluster-wide limit"):
            app.worker(queues=["q"]).start()
