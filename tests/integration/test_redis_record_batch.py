"""Record updates made together go to Redis as one script call, which applies each of
them whole, one after the other (real server)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from taskflow._redis.batcher import BATCH
from taskflow.results.redis import RedisResultStore
from tests.integration.redis_helpers import private_url, script_calls

pytestmark = pytest.mark.integration


@pytest.fixture
def url(tmp_path: Path) -> Iterator[str]:
    # A server of the test's own: the tests count its script calls.
    yield from private_url(tmp_path, lease=5)


def test_record_updates_made_together_are_one_script_call_and_each_applies_whole(
    url: str,
) -> None:
    async def main() -> None:
        store = RedisResultStore.from_url(url)
        await store.connect()
        client = redis.Redis.from_url(url.split("?", 1)[0])
        try:
            await store.create_many([(i, {"status": "queued", "attempts": 0}) for i in "abc"], None)
            assert await store.update("c", {"status": "succeeded", "result": 1}, 60.0)
            before = script_calls(client)
            a, b, c, d = await asyncio.gather(
                store.update("a", {"status": "running", "attempts": 1}, None),
                store.update("b", {"status": "succeeded", "result": [1, 2]}, 60.0),
                store.update("c", {"status": "running"}, None),
                store.update("d", {"status": "running"}, None),
            )
            assert script_calls(client) - before == 1
            assert a is not None and (a["status"], a["attempts"]) == ("running", 1)
            assert b is not None and (b["status"], b["result"]) == ("succeeded", [1, 2])
            assert c is None  # terminal already: left as it was
            assert (await store.get("c") or {})["result"] == 1
            assert d == {"id": "d", "status": "running"}  # no record yet: made
            assert 0 < client.pttl(store.key("r", "b")) <= 60_000  # the terminal one's ttl
            assert client.pttl(store.key("r", "a")) == -1
        finally:
            client.close()
            await store.close()

    asyncio.run(main())


def test_many_updates_go_in_calls_of_a_bounded_size(url: str) -> None:
    async def main() -> None:
        store = RedisResultStore.from_url(url)
        await store.connect()
        client = redis.Redis.from_url(url.split("?", 1)[0])
        ids = [f"t{i}" for i in range(2 * BATCH + 1)]
        try:
            before = script_calls(client)
            rows = await store.update_many([(i, {"status": "cancelled"}) for i in ids], 60.0)
            # Redis serves nobody else while a script runs: a purge of thousands of
            # records is several calls, not one.
            assert script_calls(client) - before == 3
            assert [row and row["status"] for row in rows] == ["cancelled"] * len(ids)
            assert (await store.get(ids[-1]) or {})["status"] == "cancelled"
        finally:
            client.close()
            await store.close()

    asyncio.run(main())
