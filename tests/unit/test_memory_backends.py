"""Memory broker and result store behaviour beyond the shared contract, on a fake clock."""

from __future__ import annotations

import asyncio
import gc
import threading
import time
import uuid
from typing import Any

import pytest

from taskflow.brokers.base import Message
from taskflow.brokers.memory import MemoryBroker
from taskflow.clock import FakeClock
from taskflow.errors import QueueFull
from taskflow.results.memory import MemoryResultStore

Q = "default"


def msg(body: str = "x", queue: str = Q, **kw: Any) -> Message:
    return Message(id=uuid.uuid4().hex, queue=queue, body=body.encode(), **kw)


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 30))


# -- broker ----------------------------------------------------------------------------


def test_an_eta_message_is_released_when_the_fake_clock_reaches_it(clock: FakeClock) -> None:
    broker = MemoryBroker(clock=clock)

    async def body() -> None:
        await broker.publish([msg("later", eta=clock.time() + 10)])
        assert await broker.fetch([Q], 10, 0) == []
        clock.advance(9.9)
        assert await broker.fetch([Q], 10, 0) == []
        assert (await broker.depth(Q))["scheduled"] == 1
        clock.advance(0.1)
        assert [d.body for d in await broker.fetch([Q], 10, 0)] == [b"later"]

    run(body())


def test_a_waiting_fetch_wakes_when_the_fake_clock_reaches_an_eta(clock: FakeClock) -> None:
    broker = MemoryBroker(clock=clock)

    async def body() -> None:
        await broker.publish([msg("later", eta=clock.time() + 60)])
        waiting = asyncio.ensure_future(broker.fetch([Q], 10, 10.0))
        done, _ = await asyncio.wait({waiting}, timeout=0.05)
        assert not done
        started = time.monotonic()
        clock.advance(60)
        assert [d.body for d in await waiting] == [b"later"]
        assert time.monotonic() - started < 1.0

    run(body())


def test_an_expired_lease_is_redelivered_once_the_fake_clock_passes_it(
    clock: FakeClock,
) -> None:
    broker = MemoryBroker(lease=30, clock=clock)

    async def body() -> None:
        await broker.publish([msg(max_deliveries=3)])
        (first,) = await broker.fetch([Q], 1, 0)
        clock.advance(29.9)
        assert await broker.fetch([Q], 1, 0) == []
        assert (await broker.depth(Q))["inflight"] == 1
        clock.advance(0.1)
        (second,) = await broker.fetch([Q], 1, 0)
        assert (second.id, second.delivery_count) == (first.id, 2)
        assert await first.ack() is False
        assert await second.ack()

    run(body())


def test_touch_moves_the_lease_deadline_forward(clock: FakeClock) -> None:
    broker = MemoryBroker(lease=30, clock=clock)

    async def body() -> None:
        await broker.publish([msg(max_deliveries=3)])
        (held,) = await broker.fetch([Q], 1, 0)
        for _ in range(4):
            clock.advance(20)
            assert await held.touch()
            assert await broker.fetch([Q], 1, 0) == []
        clock.advance(30)
        (again,) = await broker.fetch([Q], 1, 0)
        assert again.delivery_count == 2
        assert await held.touch() is False

    run(body())


def test_a_lost_lease_past_max_deliveries_shows_up_as_dead_without_a_fetch(
    clock: FakeClock,
) -> None:
    broker = MemoryBroker(lease=30, clock=clock)

    async def body() -> None:
        await broker.publish([msg("gone", max_deliveries=1)])
        (held,) = await broker.fetch([Q], 1, 0)
        clock.advance(31)
        assert await broker.depth(Q) == {"ready": 0, "scheduled": 0, "inflight": 0, "dead": 1}
        (dead,) = await broker.dead_letters(Q)
        assert (dead.reason, dead.body, dead.delivery_count) == ("worker_lost", b"gone", 1)
        assert dead.failed_at == clock.time()
        assert await held.ack() is False

    run(body())


def test_retry_delay_follows_the_fake_clock(clock: FakeClock) -> None:
    broker = MemoryBroker(clock=clock)

    async def body() -> None:
        await broker.publish([msg("v1")])
        (first,) = await broker.fetch([Q], 1, 0)
        assert await first.retry(b"v2", 5.0, max_deliveries=4)
        assert (await broker.depth(Q))["scheduled"] == 1
        clock.advance(5)
        (second,) = await broker.fetch([Q], 1, 0)
        assert (second.body, second.delivery_count) == (b"v2", 1)

    run(body())


def test_a_cancelled_id_published_again_with_a_later_eta_is_not_released_early(
    clock: FakeClock,
) -> None:
    broker = MemoryBroker(clock=clock)
    first = msg("first", eta=clock.time() + 10)
    again = Message(first.id, Q, b"again", eta=clock.time() + 100)

    async def body() -> None:
        await broker.publish([first])
        assert await broker.cancel(first.id, Q)
        await broker.publish([again])
        clock.advance(10)
        assert await broker.fetch([Q], 10, 0) == []
        clock.advance(90)
        assert [d.body for d in await broker.fetch([Q], 10, 0)] == [b"again"]

    run(body())


def test_a_republished_id_is_listed_and_delivered_once(clock: FakeClock) -> None:
    broker = MemoryBroker(clock=clock)
    first = msg("low", priority=0)

    async def body() -> None:
        await broker.publish([first, msg("middle", priority=5)])
        assert await broker.cancel(first.id, Q)
        await broker.publish([Message(first.id, Q, b"high", priority=9)])
        assert await broker.peek(Q) == [b"high", b"middle"]
        assert [d.body for d in await broker.fetch([Q], 10, 0)] == [b"high", b"middle"]

    run(body())


def test_cancel_names_the_queue_and_leaves_other_queues_alone(clock: FakeClock) -> None:
    broker = MemoryBroker(clock=clock)
    sent = msg("mine", queue="a")

    async def body() -> None:
        await broker.publish([sent])
        assert await broker.cancel(sent.id, "b") is False
        assert await broker.cancel(sent.id, "a")

    run(body())


def test_replay_into_a_full_queue_raises_and_keeps_the_dead_letters(clock: FakeClock) -> None:
    broker = MemoryBroker(clock=clock)

    async def body() -> None:
        await broker.declare(Q, max_length=1)
        await broker.publish([msg("dead")])
        (held,) = await broker.fetch([Q], 1, 0)
        assert await held.dead_letter("rejected", "boom")
        await broker.publish([msg("filler")])
        with pytest.raises(QueueFull):
            await broker.replay(Q)
        assert [d.body for d in await broker.dead_letters(Q)] == [b"dead"]
        assert await broker.purge(Q) == 1
        assert await broker.replay(Q) == 1
        assert await broker.dead_letters(Q) == []
        assert [d.body for d in await broker.fetch([Q], 10, 0)] == [b"dead"]

    run(body())


def test_peek_and_depth_see_messages_that_became_due(clock: FakeClock) -> None:
    broker = MemoryBroker(clock=clock)

    async def body() -> None:
        await broker.publish([msg("due", eta=clock.time() + 1)])
        assert await broker.peek(Q) == []
        clock.advance(1)
        assert await broker.peek(Q) == [b"due"]
        assert (await broker.depth(Q))["ready"] == 1

    run(body())


def test_purge_then_publish_keeps_the_bound_exact(clock: FakeClock) -> None:
    broker = MemoryBroker(clock=clock)

    async def body() -> None:
        await broker.declare(Q, max_length=2)
        await broker.publish([msg(), msg(eta=clock.time() + 5)])
        assert await broker.purge(Q) == 2
        await broker.publish([msg("a"), msg("b")])
        with pytest.raises(QueueFull):
            await broker.publish([msg("c")])
        clock.advance(5)  # the purged scheduled entry must not come back
        assert [d.body for d in await broker.fetch([Q], 10, 0)] == [b"a", b"b"]

    run(body())


def test_a_forgotten_control_reader_starts_fresh(clock: FakeClock) -> None:
    broker = MemoryBroker(clock=clock)

    async def body() -> None:
        assert await broker.control_messages(0) == []
        await broker.send_control({"cmd": "cancel", "id": "a"})
        broker.forget_control_reader()
        await broker.send_control({"cmd": "cancel", "id": "b"})
        assert await broker.control_messages(0) == []
        await broker.send_control({"cmd": "cancel", "id": "c"})
        assert await broker.control_messages(0) == [{"cmd": "cancel", "id": "c"}]

    run(body())


def test_a_new_reader_task_never_inherits_the_cursor_of_a_finished_one(
    clock: FakeClock,
) -> None:
    broker = MemoryBroker(clock=clock)

    async def read() -> list[dict[str, Any]]:
        return await broker.control_messages(0)

    async def body() -> None:
        assert await asyncio.ensure_future(read()) == []
        await broker.send_control({"cmd": "cancel", "id": "old"})
        assert await asyncio.ensure_future(read()) == []
        gc.collect()
        assert len(broker._control_cursors) <= 1  # at most the reader just finished

    run(body())


def test_one_broker_serves_fetches_on_two_event_loops() -> None:
    broker = MemoryBroker()
    got: list[bytes] = []
    waiting = threading.Event()

    async def consume() -> None:
        task = asyncio.ensure_future(broker.fetch([Q], 1, 10.0))
        await asyncio.wait({task}, timeout=0.05)
        waiting.set()
        got.extend(d.body for d in await task)

    consumer = threading.Thread(target=lambda: run(consume()))
    consumer.start()
    assert waiting.wait(10)
    run(broker.publish([msg("cross-loop")]))
    consumer.join(10)
    assert got == [b"cross-loop"]


# -- result store ----------------------------------------------------------------------


def test_records_values_and_counters_expire_on_the_fake_clock(clock: FakeClock) -> None:
    store = MemoryResultStore(clock=clock)

    async def body() -> None:
        await store.update("t", {"status": "succeeded"}, 10)
        await store.update("forever", {"status": "succeeded"}, None)
        assert await store.set_nx("k", "v", 10) is None
        assert await store.incr("c", 3, 10) == 3
        clock.advance(9.9)
        assert await store.get("t") is not None
        assert await store.get_value("k") == "v"
        clock.advance(0.1)
        assert await store.get("t") is None
        assert await store.get_value("k") is None
        assert await store.incr("c") == 1
        assert await store.get("forever") is not None
        assert await store.delete("t") is False

    run(body())


def test_max_entries_drops_the_oldest_terminal_records_first(clock: FakeClock) -> None:
    store = MemoryResultStore(max_entries=3, clock=clock)

    async def body() -> None:
        await store.update("running", {"status": "running"}, None)
        for name in ("done-1", "done-2", "done-3"):
            await store.update(name, {"status": "succeeded"}, None)
        assert len(store) == 3
        assert await store.get("done-1") is None
        assert await store.get("running") is not None
        await store.update("done-4", {"status": "failed"}, None)
        assert [await store.get(n) is not None for n in ("done-2", "done-3", "done-4")] == [
            False,
            True,
            True,
        ]

    run(body())


def test_max_entries_keeps_unfinished_records_even_over_the_bound(clock: FakeClock) -> None:
    store = MemoryResultStore(max_entries=2, clock=clock)

    async def body() -> None:
        for i in range(4):
            await store.update(f"r{i}", {"status": "running"}, None)
        assert len(store) == 4
        await store.update("r0", {"status": "succeeded"}, None)
        # r0 is now the newest record, yet the only terminal one: it goes.
        assert len(store) == 3
        assert await store.get("r0") is None

    run(body())


def test_max_entries_drops_expired_records_as_well(clock: FakeClock) -> None:
    store = MemoryResultStore(max_entries=2, clock=clock)

    async def body() -> None:
        await store.update("short", {"status": "running"}, 1)
        await store.update("a", {"status": "running"}, None)
        clock.advance(2)
        await store.update("b", {"status": "running"}, None)
        assert len(store) == 2
        assert await store.get("a") is not None

    run(body())


def test_wait_blocking_from_a_thread_wakes_when_the_record_finishes() -> None:
    store = MemoryResultStore()
    store.update_blocking("t", {"status": "running"}, None)
    out: list[Any] = []
    started = threading.Event()

    def waiter() -> None:
        started.set()
        out.append(store.wait_blocking("t", 10.0))

    thread = threading.Thread(target=waiter)
    thread.start()
    assert started.wait(10)
    began = time.monotonic()
    run(store.update("t", {"status": "succeeded", "result": 7}, None))
    thread.join(10)
    assert not thread.is_alive()
    assert time.monotonic() - began < 1.0
    assert out == [{"id": "t", "status": "succeeded", "result": 7}]


def test_wait_blocking_returns_at_once_for_a_finished_record_and_none_on_timeout() -> None:
    store = MemoryResultStore()
    store.update_blocking("done", {"status": "cancelled"}, None)
    assert store.wait_blocking("done", 10.0) == {"id": "done", "status": "cancelled"}
    store.update_blocking("open", {"status": "running"}, None)
    assert store.wait_blocking("open", 0.05) is None
    assert store.wait_blocking("unknown", 0) is None


def test_timed_out_and_cancelled_waits_leave_no_waiter_behind() -> None:
    store = MemoryResultStore()

    async def body() -> None:
        assert await store.wait("t", 0.01) is None
        assert await store.wait("t", 0) is None
        task = asyncio.ensure_future(store.wait("t", 10.0))
        await asyncio.wait({task}, timeout=0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run(body())
    assert store.wait_blocking("t", 0.01) is None
    assert store._waiters == {}


def test_a_returned_record_does_not_alias_the_stored_changes() -> None:
    store = MemoryResultStore()

    async def body() -> None:
        changes: dict[str, Any] = {"status": "running", "tags": ["a"]}
        await store.update("t", changes, None)
        changes["status"] = "tampered"
        assert (await store.get("t") or {})["status"] == "running"

    run(body())
