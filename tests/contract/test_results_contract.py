"""The result-store contract: every store passes these tests (see ``taskflow/results/base.py``).

They run on real time so that real servers pass them too. Waiting is checked by latency
(a push-based ``wait`` wakes well before its timeout), never by sleeping.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from taskflow.clock import FakeClock
from taskflow.message import TERMINAL_STATUSES
from taskflow.results.base import ResultStore

from .conftest import run

TERMINAL = sorted(s.value for s in TERMINAL_STATUSES)


def new_id() -> str:
    return f"t-{uuid.uuid4().hex}"


def test_getting_an_unknown_record_returns_none(
    loop: asyncio.AbstractEventLoop, store: ResultStore
) -> None:
    assert run(loop, store.get(new_id())) is None


def test_update_creates_a_record_and_merges_later_changes(
    loop: asyncio.AbstractEventLoop, store: ResultStore
) -> None:
    tid = new_id()

    async def body() -> None:
        created = await store.update(tid, {"status": "queued", "name": "shop.add"}, None)
        assert created == {"id": tid, "status": "queued", "name": "shop.add"}
        merged = await store.update(tid, {"status": "running", "worker": "w1"}, None)
        assert merged == {"id": tid, "status": "running", "name": "shop.add", "worker": "w1"}
        assert await store.get(tid) == merged

    run(loop, body())


def test_update_keeps_json_safe_values_with_their_types(
    loop: asyncio.AbstractEventLoop, store: ResultStore
) -> None:
    tid = new_id()
    changes = {
        "status": "running",
        "attempts": 2,
        "created_at": 1_700_000_000.25,
        "ok": True,
        "worker": None,
        "result": [1, "two", {"three": 3.5}],
        "error": {"type": "ValueError", "message": "bad: \u00e9"},
    }

    async def body() -> None:
        assert await store.update(tid, changes, None) == {"id": tid, **changes}
        assert await store.get(tid) == {"id": tid, **changes}

    run(loop, body())


def test_a_returned_record_is_a_copy(loop: asyncio.AbstractEventLoop, store: ResultStore) -> None:
    tid = new_id()

    async def body() -> None:
        record = await store.update(tid, {"status": "running"}, None)
        assert record is not None
        record["status"] = "tampered"
        fetched = await store.get(tid)
        assert fetched is not None
        fetched["status"] = "tampered"
        assert (await store.get(tid) or {})["status"] == "running"

    run(loop, body())


@pytest.mark.parametrize("status", TERMINAL)
def test_update_of_a_terminal_record_returns_none_and_changes_nothing(
    loop: asyncio.AbstractEventLoop, store: ResultStore, status: str
) -> None:
    tid = new_id()

    async def body() -> None:
        final = await store.update(tid, {"status": status, "result": 1}, None)
        assert final is not None
        assert await store.update(tid, {"status": "running", "result": 2}, None) is None
        assert await store.update(tid, {"extra": "field"}, 60.0) is None
        for other in TERMINAL:
            assert await store.update(tid, {"status": other}, None) is None
        assert await store.get(tid) == final

    run(loop, body())


def test_restart_starts_a_new_cycle_of_a_terminal_record_and_keeps_its_history(
    loop: asyncio.AbstractEventLoop, store: ResultStore
) -> None:
    tid = new_id()
    error = {"type": "ValueError", "message": "bad"}
    first = {"status": "failed", "error": error, "attempts": 1, "finished_at": 1_700_000_000.125}

    async def body() -> None:
        await store.update(tid, {"name": "shop.add", "status": "running", "worker": "w1"}, None)
        await store.update(tid, {**first, "started_at": 1_700_000_000.0}, 60.0)
        fresh = await store.restart(tid, {"status": "queued", "attempts": 0})
        entry = {**first, "worker": "w1"}
        expected = {"id": tid, "name": "shop.add", "status": "queued", "attempts": 0}
        assert fresh == {**expected, "history": [entry]}
        assert await store.get(tid) == fresh
        # The new cycle is an ordinary live record: updates merge, and the history stays.
        await store.update(tid, {"status": "running", "worker": "w2"}, None)
        done = await store.update(tid, {"status": "succeeded", "result": 3}, 60.0)
        assert done is not None and done["history"] == [entry]
        again = await store.restart(tid, {"status": "queued"})
        assert again is not None
        assert [h["status"] for h in again["history"]] == ["failed", "succeeded"]
        assert again["history"][1] == {
            "status": "succeeded",
            "error": None,
            "attempts": 0,
            "finished_at": None,
            "worker": "w2",
        }
        assert "result" not in again and "worker" not in again

    run(loop, body())


def test_restart_refuses_a_record_that_is_absent_or_not_terminal(
    loop: asyncio.AbstractEventLoop, store: ResultStore
) -> None:
    running, unknown = new_id(), new_id()

    async def body() -> None:
        before = await store.update(running, {"status": "running"}, None)
        assert await store.restart(running, {"status": "queued"}) is None
        assert await store.get(running) == before
        assert await store.restart(unknown, {"status": "queued"}) is None
        assert await store.get(unknown) is None

    run(loop, body())


def test_concurrent_restarts_of_one_record_let_exactly_one_through(
    loop: asyncio.AbstractEventLoop, store: ResultStore
) -> None:
    tid = new_id()

    async def body() -> None:
        await store.update(tid, {"status": "failed"}, None)
        outcomes = await asyncio.gather(
            *(store.restart(tid, {"status": "queued"}) for _ in range(10))
        )
        assert sum(o is not None for o in outcomes) == 1
        assert len((await store.get(tid) or {})["history"]) == 1

    run(loop, body())


def test_wait_returns_at_once_for_a_terminal_record(
    loop: asyncio.AbstractEventLoop, store: ResultStore
) -> None:
    tid = new_id()

    async def body() -> None:
        await store.update(tid, {"status": "succeeded", "result": 42}, None)
        started = time.monotonic()
        record = await store.wait(tid, 10.0)
        assert record is not None and record["result"] == 42
        assert time.monotonic() - started < 1.0

    run(loop, body())


def test_wait_wakes_promptly_when_another_task_finishes_the_record(
    loop: asyncio.AbstractEventLoop, store: ResultStore
) -> None:
    tid = new_id()

    async def body() -> None:
        await store.update(tid, {"status": "running"}, None)
        waiting = asyncio.ensure_future(store.wait(tid, 10.0))
        done, _ = await asyncio.wait({waiting}, timeout=0.1)
        assert not done
        # A non-terminal change does not end the wait.
        await store.update(tid, {"progress": 50}, None)
        done, _ = await asyncio.wait({waiting}, timeout=0.1)
        assert not done
        started = time.monotonic()
        await store.update(tid, {"status": "failed", "error": {"type": "X"}}, None)
        record = await asyncio.wait_for(waiting, 10.0)
        latency = time.monotonic() - started
        assert record is not None
        assert (record["status"], record["progress"]) == ("failed", 50)
        assert latency < 1.0, f"wait woke {latency:.2f}s after the update (timeout 10s)"

    run(loop, body())


def test_several_waiters_on_one_record_all_wake(
    loop: asyncio.AbstractEventLoop, store: ResultStore
) -> None:
    tid = new_id()

    async def body() -> None:
        waiters = [asyncio.ensure_future(store.wait(tid, 10.0)) for _ in range(3)]
        done, _ = await asyncio.wait(waiters, timeout=0.1)
        assert not done
        await store.update(tid, {"status": "cancelled"}, None)
        records = await asyncio.wait_for(asyncio.gather(*waiters), 10.0)
        assert [r and r["status"] for r in records] == ["cancelled"] * 3

    run(loop, body())


def test_wait_returns_none_when_its_timeout_runs_out(
    loop: asyncio.AbstractEventLoop, store: ResultStore
) -> None:
    running, unknown = new_id(), new_id()

    async def body() -> None:
        await store.update(running, {"status": "running"}, None)
        started = time.monotonic()
        assert await store.wait(running, 0.2) is None
        assert 0.15 <= time.monotonic() - started < 2.0
        assert await store.wait(unknown, 0.1) is None
        assert await store.wait(unknown, 0) is None

    run(loop, body())


def test_records_values_and_counters_expire_after_their_ttl(
    loop: asyncio.AbstractEventLoop, timed: tuple[ResultStore, FakeClock]
) -> None:
    store, clock = timed
    short, lasting, replayed = new_id(), new_id(), new_id()
    key, counter = f"k-{uuid.uuid4().hex}", f"c-{uuid.uuid4().hex}"

    async def body() -> None:
        await store.update(short, {"status": "succeeded"}, 0.3)
        await store.update(lasting, {"status": "succeeded"}, 60.0)
        # A restarted record is live again: it loses the expiry of its terminal cycle.
        await store.update(replayed, {"status": "failed"}, 0.3)
        assert await store.restart(replayed, {"status": "queued"}) is not None
        assert await store.set_nx(key, "v", 0.3) is None
        assert await store.incr(counter, 1, 0.3) == 1
        assert await store.get(short) is not None
        # Every store checks the stored expiry against its own clock on each read.
        clock.advance(0.6)
        assert await store.get(short) is None
        assert await store.get(lasting) is not None
        assert (await store.get(replayed) or {}).get("status") == "queued"
        assert await store.get_value(key) is None
        assert await store.set_nx(key, "fresh", None) is None
        assert await store.incr(counter) == 1
        # An expired terminal record no longer blocks a new one under the same id.
        assert await store.update(short, {"status": "queued"}, None) is not None
        await store.delete_value(key)
        await store.delete_value(counter)
        await store.delete(lasting)
        await store.delete(short)
        await store.delete(replayed)

    run(loop, body())


def test_delete_forgets_a_record(loop: asyncio.AbstractEventLoop, store: ResultStore) -> None:
    tid = new_id()

    async def body() -> None:
        await store.update(tid, {"status": "succeeded"}, None)
        assert await store.delete(tid) is True
        assert await store.get(tid) is None
        assert await store.delete(tid) is False
        assert await store.update(tid, {"status": "queued"}, None) == {
            "id": tid,
            "status": "queued",
        }

    run(loop, body())


def test_set_nx_sets_once_and_then_returns_the_existing_value(
    loop: asyncio.AbstractEventLoop, store: ResultStore
) -> None:
    key = f"k-{uuid.uuid4().hex}"

    async def body() -> None:
        assert await store.get_value(key) is None
        assert await store.set_nx(key, '{"id": "first"}', 60.0) is None
        assert await store.set_nx(key, '{"id": "second"}', 60.0) == '{"id": "first"}'
        assert await store.get_value(key) == '{"id": "first"}'
        await store.delete_value(key)
        assert await store.get_value(key) is None
        await store.delete_value(key)  # deleting a missing key is fine
        assert await store.set_nx(key, "third", None) is None
        assert await store.get_value(key) == "third"
        await store.delete_value(key)

    run(loop, body())


def test_concurrent_set_nx_lets_exactly_one_caller_win(
    loop: asyncio.AbstractEventLoop, store: ResultStore
) -> None:
    key = f"k-{uuid.uuid4().hex}"

    async def body() -> None:
        results = await asyncio.gather(*(store.set_nx(key, str(i), 60.0) for i in range(50)))
        winners = [i for i, r in enumerate(results) if r is None]
        assert len(winners) == 1
        assert set(results) - {None} == {str(winners[0])}
        await store.delete_value(key)

    run(loop, body())


def test_incr_is_atomic_under_200_concurrent_increments(
    loop: asyncio.AbstractEventLoop, store: ResultStore
) -> None:
    key = f"c-{uuid.uuid4().hex}"

    async def body() -> None:
        values = await asyncio.gather(*(store.incr(key, 1, 60.0) for _ in range(200)))
        assert sorted(values) == list(range(1, 201))
        assert await store.get_value(key) == "200"
        await store.delete_value(key)

    run(loop, body())


def test_incr_adds_any_amount_starting_from_zero(
    loop: asyncio.AbstractEventLoop, store: ResultStore
) -> None:
    key = f"c-{uuid.uuid4().hex}"

    async def body() -> None:
        assert await store.incr(key, 5) == 5
        assert await store.incr(key, -2) == 3
        assert await store.incr(key) == 4
        await store.delete_value(key)
        assert await store.incr(key) == 1
        await store.delete_value(key)

    run(loop, body())


def test_get_many_returns_records_in_the_order_asked(
    loop: asyncio.AbstractEventLoop, store: ResultStore
) -> None:
    a, missing, b = new_id(), new_id(), new_id()

    async def body() -> None:
        await store.update(a, {"status": "queued", "n": 1}, None)
        await store.update(b, {"status": "succeeded", "n": 2}, None)
        got = await store.get_many([b, missing, a, b])
        assert [r and r["n"] for r in got] == [2, None, 1, 2]
        assert await store.get_many([]) == []

    run(loop, body())


def test_update_many_merges_each_record_and_skips_terminal_ones(
    loop: asyncio.AbstractEventLoop, store: ResultStore
) -> None:
    fresh, running, done = new_id(), new_id(), new_id()

    async def body() -> None:
        await store.update(running, {"status": "running", "name": "x"}, None)
        await store.update(done, {"status": "succeeded"}, None)
        out = await store.update_many(
            [
                (fresh, {"status": "queued"}),
                (running, {"status": "retrying"}),
                (done, {"status": "running"}),
            ],
            None,
        )
        assert out == [
            {"id": fresh, "status": "queued"},
            {"id": running, "status": "retrying", "name": "x"},
            None,
        ]
        assert (await store.get(done) or {})["status"] == "succeeded"
        assert await store.update_many([], None) == []

    run(loop, body())


def test_create_many_writes_only_records_that_do_not_exist_yet(
    loop: asyncio.AbstractEventLoop, store: ResultStore
) -> None:
    fresh, existing = new_id(), new_id()

    async def body() -> None:
        await store.update(existing, {"status": "running", "worker": "w1"}, None)
        written = await store.create_many(
            [(fresh, {"status": "queued", "name": "a"}), (existing, {"status": "queued"})], None
        )
        assert written == [True, False]
        assert await store.get(fresh) == {"id": fresh, "status": "queued", "name": "a"}
        assert await store.get(existing) == {"id": existing, "status": "running", "worker": "w1"}
        assert await store.create_many([], None) == []

    run(loop, body())


def test_close_is_idempotent(loop: asyncio.AbstractEventLoop, store: ResultStore) -> None:
    async def body() -> None:
        await store.close()
        await store.close()

    run(loop, body())
