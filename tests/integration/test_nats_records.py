"""The NATS result store's record writes: a worker's second write of a record it wrote
itself (running, then the outcome) is one compare-and-set without a read, and never
loses what another process wrote in between."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from taskflow.errors import BrokerError
from taskflow.results.nats import NatsResultStore
from tests.conftest import require_service
from tests.contract.backend_nats import URL, _delete_streams


def _run(test: Callable[[NatsResultStore, NatsResultStore], Awaitable[None]]) -> None:
    """Run ``test`` with two stores (two processes' worth) on one fresh prefix."""
    require_service("nats", "127.0.0.1", 4222)
    prefix = f"tfrec{uuid.uuid4().hex[:12]}"

    async def body() -> None:
        a = NatsResultStore(URL, prefix=prefix, sweep_interval=None)
        b = NatsResultStore(URL, prefix=prefix, sweep_interval=None)
        try:
            await a.connect()
            await b.connect()
            await test(a, b)
        finally:
            await a.close()
            await b.close()
            await _delete_streams([f"KV_{a.bucket}"])

    asyncio.run(body())


def _requests(store: NatsResultStore) -> list[str]:
    """Record the subject of every request ``store`` sends from now on."""
    sent: list[str] = []
    ask = store._ask

    async def counted(subject: str, data: bytes, headers: dict[str, str] | None) -> Any:
        sent.append(subject)
        return await ask(subject, data, headers)

    store._ask = counted  # type: ignore[method-assign]
    return sent


def test_the_second_write_of_a_record_written_here_reads_nothing() -> None:
    async def test(a: NatsResultStore, b: NatsResultStore) -> None:
        await b.update("t1", {"status": "queued", "task": "shop.charge"}, None)  # a producer
        sent = _requests(a)
        await a.update("t1", {"status": "running"}, None)
        assert len(sent) == 2  # the producer's record is read, then set
        assert sent[0].startswith("$JS.API.STREAM.MSG.GET.")
        sent.clear()
        done = await a.update("t1", {"status": "succeeded", "result": 3}, 60.0)
        assert sent == [f"$KV.{a.bucket}.r.t1"]  # one compare-and-set, no read
        assert done is not None and done["task"] == "shop.charge"
        assert await b.get("t1") == done

    _run(test)


def test_a_write_between_two_of_ours_is_kept() -> None:
    async def test(a: NatsResultStore, b: NatsResultStore) -> None:
        await a.update("t2", {"status": "running"}, None)
        await b.update("t2", {"progress": 50}, None)  # another process, meanwhile
        done = await a.update("t2", {"status": "succeeded"}, 60.0)
        assert done is not None
        assert done["progress"] == 50 and done["status"] == "succeeded"
        assert await b.get("t2") == done

    _run(test)


def test_a_record_made_final_elsewhere_is_not_overwritten() -> None:
    async def test(a: NatsResultStore, b: NatsResultStore) -> None:
        await a.update("t3", {"status": "running"}, None)
        await b.update("t3", {"status": "cancelled"}, 60.0)  # an operator, meanwhile
        assert await a.update("t3", {"status": "succeeded", "result": 1}, 60.0) is None
        record = await b.get("t3")
        assert record is not None and record["status"] == "cancelled"
        assert "result" not in record

    _run(test)


def test_a_deleted_record_is_written_afresh() -> None:
    async def test(a: NatsResultStore, b: NatsResultStore) -> None:
        await a.update("t4", {"status": "running", "task": "x"}, None)
        assert await b.delete("t4")
        record = await a.update("t4", {"status": "succeeded"}, 60.0)
        assert record == {"id": "t4", "status": "succeeded"}  # nothing of the deleted one
        assert await b.get("t4") == record

    _run(test)


def test_a_missing_bucket_is_a_broker_error_naming_the_server() -> None:
    async def test(a: NatsResultStore, b: NatsResultStore) -> None:
        await a.update("t5", {"status": "running"}, None)
        await _delete_streams([f"KV_{a.bucket}"])
        for call in (
            lambda: a.update("t5", {"status": "succeeded"}, 60.0),  # the kept revision
            lambda: a.update("t6", {"status": "running"}, None),  # a read first
            lambda: a.get("t5"),
        ):
            with pytest.raises(BrokerError, match="127.0.0.1:4222"):
                await asyncio.wait_for(call(), 10)

    _run(test)


def test_only_running_records_are_kept() -> None:
    # A retry may run in any worker and a retrying record carries its error: keeping it
    # would hold memory for a write that is seldom this process's.
    async def test(a: NatsResultStore, b: NatsResultStore) -> None:
        await a.update("t7", {"status": "retrying", "error": "x" * 1000}, None)
        sent = _requests(a)
        await a.update("t7", {"status": "running"}, None)
        assert len(sent) == 2 and sent[0].startswith("$JS.API.STREAM.MSG.GET.")
        assert a._mine.keys() == {"r.t7"}  # now running: kept

    _run(test)
