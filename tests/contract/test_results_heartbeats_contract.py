"""The heartbeat and audit part of the result-store contract (``ResultStore.put_worker``,
``remove_worker``, ``workers``, ``add_audit``, ``audit``), on every store.

Retention is checked on a fake clock: every store keeps each entry's expiry on its own
clock, so moving that clock past the retention makes the entry disappear at once, on the
real servers too.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

from taskflow.clock import FakeClock
from taskflow.results.base import ResultStore

from .conftest import run


def heartbeat(worker_id: str, **changes: Any) -> dict[str, Any]:
    info: dict[str, Any] = {
        "id": worker_id,
        "hostname": "box-1",
        "pid": 4242,
        "queues": ["default", "emails"],
        "concurrency": 8,
        "pool": "threads",
        "running": ["t-1", "t-2"],
        "counters": {"succeeded": 3, "failed": 1, "retried": 0, "cancelled": 0},
        "started_at": 1_700_000_000.5,
        "last_seen": 1_700_000_010.25,
        "heartbeat": 5.0,
    }
    info.update(changes)
    return info


def new_worker_id() -> str:
    # Shaped like real worker names (host:pid:suffix), which are not plain KV tokens.
    return f"host-a:{uuid.uuid4().int % 100000}:{uuid.uuid4().hex[:6]}"


def test_a_heartbeat_is_listed_with_every_field_and_type_kept(
    loop: asyncio.AbstractEventLoop, store: ResultStore
) -> None:
    wid = new_worker_id()
    info = heartbeat(wid)
    run(loop, store.put_worker(info, retention=60.0))
    assert run(loop, store.workers()) == [info]


def test_a_later_heartbeat_replaces_the_earlier_one(
    loop: asyncio.AbstractEventLoop, store: ResultStore
) -> None:
    wid = new_worker_id()

    async def body() -> None:
        await store.put_worker(heartbeat(wid, running=["t-1"]), retention=60.0)
        await store.put_worker(
            heartbeat(wid, running=[], last_seen=1_700_000_020.0), retention=60.0
        )
        listed = await store.workers()
        assert [w["id"] for w in listed] == [wid]
        assert listed[0]["running"] == []
        assert listed[0]["last_seen"] == 1_700_000_020.0

    run(loop, body())


def test_workers_are_listed_by_id_and_a_removed_one_is_gone(
    loop: asyncio.AbstractEventLoop, store: ResultStore
) -> None:
    ids = sorted(new_worker_id() for _ in range(3))

    async def body() -> None:
        for wid in reversed(ids):
            await store.put_worker(heartbeat(wid), retention=60.0)
        assert [w["id"] for w in await store.workers()] == ids
        await store.remove_worker(ids[1])
        assert [w["id"] for w in await store.workers()] == [ids[0], ids[2]]
        await store.remove_worker(ids[1])  # removing twice (or an unknown id) is no error
        await store.remove_worker(new_worker_id())
        assert [w["id"] for w in await store.workers()] == [ids[0], ids[2]]

    run(loop, body())


def test_no_workers_is_an_empty_list(loop: asyncio.AbstractEventLoop, store: ResultStore) -> None:
    assert run(loop, store.workers()) == []
    assert run(loop, store.audit()) == []


def test_a_heartbeat_disappears_its_retention_after_its_last_write(
    loop: asyncio.AbstractEventLoop, timed: tuple[ResultStore, FakeClock]
) -> None:
    store, clock = timed
    silent, beating = new_worker_id(), new_worker_id()

    async def body() -> None:
        await store.put_worker(heartbeat(silent), retention=30.0)
        await store.put_worker(heartbeat(beating), retention=30.0)
        clock.advance(20.0)
        await store.put_worker(heartbeat(beating), retention=30.0)  # still beating
        clock.advance(9.0)
        assert {w["id"] for w in await store.workers()} == {silent, beating}
        clock.advance(1.5)  # 30.5 s after the silent worker's last write
        assert [w["id"] for w in await store.workers()] == [beating]
        clock.advance(20.0)
        assert await store.workers() == []

    run(loop, body())


def test_an_expired_worker_that_beats_again_is_listed_again(
    loop: asyncio.AbstractEventLoop, timed: tuple[ResultStore, FakeClock]
) -> None:
    store, clock = timed
    wid = new_worker_id()

    async def body() -> None:
        await store.put_worker(heartbeat(wid), retention=10.0)
        clock.advance(11.0)
        assert await store.workers() == []
        await store.put_worker(heartbeat(wid, pid=7), retention=10.0)
        assert [(w["id"], w["pid"]) for w in await store.workers()] == [(wid, 7)]

    run(loop, body())


def audit_entry(at: float, action: str, **more: Any) -> dict[str, Any]:
    return {"at": at, "actor": "ops@example", "action": action, "ids": ["t-1"], **more}


def test_audit_returns_entries_newest_first_up_to_the_limit(
    loop: asyncio.AbstractEventLoop, store: ResultStore
) -> None:
    # ``at`` is when the action was taken, so close to the time of writing.
    start = time.time() - 10.0
    entries = [audit_entry(start + i, f"replay-{i}") for i in range(5)]

    async def body() -> None:
        for entry in (entries[2], entries[0], entries[4], entries[1], entries[3]):
            await store.add_audit(entry, retention=3600.0)
        assert await store.audit() == list(reversed(entries))
        assert await store.audit(limit=2) == [entries[4], entries[3]]
        assert await store.audit(limit=0) == []

    run(loop, body())


def test_equal_audit_entries_are_both_kept(
    loop: asyncio.AbstractEventLoop, store: ResultStore
) -> None:
    entry = audit_entry(time.time(), "purge", queue="emails")

    async def body() -> None:
        await store.add_audit(dict(entry), retention=3600.0)
        await store.add_audit(dict(entry), retention=3600.0)
        assert await store.audit() == [entry, entry]

    run(loop, body())


def test_audit_entries_of_the_same_instant_come_newest_written_first(
    loop: asyncio.AbstractEventLoop, store: ResultStore
) -> None:
    at = time.time()
    entries = [audit_entry(at, f"pause-{n}") for n in range(4)]

    async def body() -> None:
        for entry in entries:
            await store.add_audit(entry, retention=3600.0)
        assert await store.audit() == list(reversed(entries))

    run(loop, body())


def test_an_audit_entry_disappears_after_its_retention(
    loop: asyncio.AbstractEventLoop, timed: tuple[ResultStore, FakeClock]
) -> None:
    store, clock = timed

    async def body() -> None:
        old = audit_entry(clock.time(), "discard")
        await store.add_audit(old, retention=100.0)
        clock.advance(60.0)
        new = audit_entry(clock.time(), "replay")
        await store.add_audit(new, retention=100.0)
        assert await store.audit() == [new, old]
        clock.advance(41.0)  # 101 s after the first write, 41 s after the second
        assert await store.audit() == [new]
        clock.advance(60.0)
        assert await store.audit() == []

    run(loop, body())
