"""Retention frees storage on every backend: an expired record is not only unreadable but
physically gone (memory: dropped by writes; Redis: the key's own TTL; NATS: the janitor)."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator

import pytest
import redis

from taskflow import App, FakeClock
from taskflow.results.memory import MemoryResultStore
from taskflow.results.nats import NatsResultStore
from taskflow.testing import drain
from tests.conftest import require_service
from tests.integration import nats_helpers, redis_helpers

NATS_URL = "nats://127.0.0.1:4222"


def test_memory_drops_expired_records_nobody_reads_again() -> None:
    clock = FakeClock()
    store = MemoryResultStore(clock=clock)

    async def body() -> None:
        for i in range(100):
            await store.update(f"done-{i}", {"status": "succeeded"}, 10.0)
        await store.update("live", {"status": "queued"}, None)
        await store.set_nx("idem", "x", 10.0)
        assert len(store) == 101
        clock.advance(61.0)  # past every TTL and the store's sweep period
        await store.update("another", {"status": "running"}, None)  # any write sweeps
        assert len(store) == 2
        assert store._values == {}
        assert await store.get("live") is not None

    asyncio.run(body())


def test_redis_keys_of_finished_records_carry_the_result_ttl() -> None:
    url, prefix = redis_helpers.shared_url(lease=30)
    try:
        with App("retention", broker=url, result_ttl=120.0) as app:

            @app.task(name="retention.one")
            def one() -> int:
                return 1

            result = one.delay()
            drain(app)
            assert result.get(timeout=5) == 1
            client = redis.Redis.from_url(url.split("?", 1)[0])
            try:
                pttl = client.pttl(f"{{{prefix}}}:r:{result.id}")
            finally:
                client.close()
            assert 110_000 < pttl <= 120_000
    finally:
        redis_helpers.drop_prefix(url, prefix)


@pytest.fixture
def nats_store() -> Iterator[NatsResultStore]:
    require_service("nats", "127.0.0.1", 4222)
    prefix = f"tfret{uuid.uuid4().hex[:10]}"
    store = NatsResultStore(NATS_URL, prefix=prefix, sweep_interval=None)
    yield store
    nats_helpers.drop_prefix(f"{NATS_URL}?prefix={prefix}", prefix)


async def _stored_keys(store: NatsResultStore) -> set[str]:
    """Keys with a message in the bucket's stream (values and delete markers alike)."""
    info = await store._conn.client().request(
        f"$JS.API.STREAM.INFO.KV_{store.bucket}",
        json.dumps({"subjects_filter": ">"}).encode(),
        timeout=5,
    )
    subjects = json.loads(info.data).get("state", {}).get("subjects") or {}
    start = len(f"$KV.{store.bucket}.")
    return {subject[start:] for subject in subjects}


def test_nats_sweep_deletes_expired_values_and_markers_and_keeps_live_ones(
    nats_store: NatsResultStore,
) -> None:
    store = nats_store

    async def body() -> None:
        await store.connect()
        try:
            await store.update("old", {"status": "succeeded"}, 0.2)
            await store.update("kept", {"status": "failed"}, 60.0)
            await store.update("live", {"status": "queued"}, None)
            await store.set_nx("idem", "x", 0.2)
            await store.update("forgotten", {"status": "running"}, None)
            await store.delete("forgotten")  # leaves a delete marker behind
            # Real time has to pass: expiry is on the store's own clock.
            await asyncio.sleep(0.4)
            assert await _stored_keys(store) == {
                "r.old",
                "r.kept",
                "r.live",
                "v.idem",
                "r.forgotten",
            }
            assert await store.sweep() == 3
            assert await _stored_keys(store) == {"r.kept", "r.live"}
            assert await store.get("live") == {"id": "live", "status": "queued"}
            # A key whose stored value was deleted takes a new value as usual.
            assert await store.set_nx("idem", "y", None) is None
            assert await store.update("old", {"status": "queued"}, None) is not None
        finally:
            await store.close()

    asyncio.run(body())


def test_nats_janitor_removes_expired_records_on_its_own(nats_store: NatsResultStore) -> None:
    store = NatsResultStore(NATS_URL, prefix=nats_store.prefix, sweep_interval=0.2)

    async def body() -> None:
        await store.connect()
        try:
            await store.update("short", {"status": "succeeded"}, 0.1)
            await store.update("live", {"status": "running"}, None)
            deadline = time.monotonic() + 10.0
            while "r.short" in await _stored_keys(store):
                assert time.monotonic() < deadline, "the janitor never removed the record"
                await asyncio.sleep(0.1)
            assert "r.live" in await _stored_keys(store)
        finally:
            await store.close()

    asyncio.run(body())
