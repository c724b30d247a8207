"""The NATS result store's calls wait for their replies within a bound, without a timer
each: a call whose reply does not come fails after its timeout, a call still waiting when
the store closes fails at once, and nothing is left running once nothing waits.

The server is reached through a proxy that stops relaying while keeping every connection
open (``tests/frozen_proxy.py``): to the client, a server that hangs.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator

import nats
import pytest

from taskflow.errors import BrokerError
from taskflow.results._nats_acks import SWEEP, PubAcks
from taskflow.results.nats import NatsResultStore
from tests.conftest import require_service
from tests.contract.backend_nats import _delete_streams
from tests.frozen_proxy import FrozenProxy, frozen_proxy

pytestmark = [pytest.mark.integration]

TIMEOUT = 0.3


@pytest.fixture
def proxy() -> Iterator[FrozenProxy]:
    require_service("nats", "127.0.0.1", 4222)
    with frozen_proxy(("127.0.0.1", 4222)) as running:
        yield running


async def _until(condition: object, within: float) -> bool:
    """Poll ``condition()`` for up to ``within`` seconds (it is the loop's own state)."""
    deadline = time.monotonic() + within
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


def test_a_call_whose_reply_does_not_come_fails_after_its_timeout(proxy: FrozenProxy) -> None:
    async def body() -> None:
        nc = await nats.connect(f"nats://127.0.0.1:{proxy.port}")
        acks = PubAcks(nc, TIMEOUT)
        try:
            await acks.open()
            # Answered: a JetStream API call the server replies to.
            reply = await (await acks.publish("$JS.API.INFO", b""))
            assert reply.data
            # Nothing waits any more: the sweeper ends, and starts again with the next call.
            assert await _until(lambda: not acks.sweeping, within=5 * SWEEP)
            proxy.freeze()
            started = time.monotonic()
            pending = await acks.publish("$JS.API.INFO", b"")
            assert acks.waiting == 1
            with pytest.raises(TimeoutError):
                await pending
            took = time.monotonic() - started
            assert TIMEOUT <= took < TIMEOUT + SWEEP + 0.5
            assert acks.waiting == 0
        finally:
            acks.close(lambda: BrokerError("closed"))
            await nc.close()

    asyncio.run(body())


def test_an_abandoned_call_is_forgotten_at_the_next_sweep(proxy: FrozenProxy) -> None:
    # A caller that gives up (its wait cancelled) must not keep its slot until the reply's
    # due time, here far away.
    async def body() -> None:
        nc = await nats.connect(f"nats://127.0.0.1:{proxy.port}")
        acks = PubAcks(nc, 60.0)
        try:
            await acks.open()
            proxy.freeze()
            pending = await acks.publish("$JS.API.INFO", b"")
            assert acks.waiting == 1
            pending.cancel()
            assert await _until(lambda: acks.waiting == 0, within=5 * SWEEP)
            assert await _until(lambda: not acks.sweeping, within=5 * SWEEP)
        finally:
            acks.close(lambda: BrokerError("closed"))
            await nc.close()

    asyncio.run(body())


def test_a_record_read_on_a_hung_server_says_it_stopped_answering(
    proxy: FrozenProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("taskflow.results.nats._TIMEOUT", TIMEOUT)
    url = f"nats://127.0.0.1:{proxy.port}"
    store = NatsResultStore(url, prefix=f"tfdl{uuid.uuid4().hex[:10]}", sweep_interval=None)

    async def body() -> None:
        await store.connect()
        try:
            proxy.freeze()
            with pytest.raises(BrokerError) as caught:
                await store.get("t1")
            assert str(caught.value) == (
                f"NATS {url}: no reply in time (the server stopped answering)"
            )
        finally:
            await store.close()

    try:
        asyncio.run(body())
    finally:
        asyncio.run(_delete_streams([f"KV_{store.bucket}"]))


def test_closing_the_store_fails_a_call_that_waits_at_once(proxy: FrozenProxy) -> None:
    # Before, the call waited out its 5-second bound after the store was closed, and then
    # said the server stopped answering.
    url = f"nats://127.0.0.1:{proxy.port}"
    store = NatsResultStore(url, prefix=f"tfdl{uuid.uuid4().hex[:10]}", sweep_interval=None)

    async def body() -> None:
        await store.connect()
        proxy.freeze()
        call = asyncio.ensure_future(store.update("t1", {"status": "running"}, None))
        assert not await _until(call.done, within=0.2)  # it waits for a reply
        acks = store._acks
        assert acks is not None and acks.waiting == 1 and acks.sweeping
        started = time.monotonic()
        await store.close()
        closed = time.monotonic() - started
        with pytest.raises(BrokerError, match=r"^NATS result store .* was closed$"):
            await asyncio.wait_for(call, 1.0)
        assert time.monotonic() - started < closed + 0.5
        assert acks.waiting == 0 and not acks.sweeping  # nothing of the store's left running

    try:
        asyncio.run(body())
    finally:
        asyncio.run(_delete_streams([f"KV_{store.bucket}"]))
