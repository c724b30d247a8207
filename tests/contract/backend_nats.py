"""NATS backends for the contract suites: each test gets its own prefix (so its own
streams and KV buckets) on the shared server, and closing the backend deletes them."""

from __future__ import annotations

import contextlib
import uuid
from typing import Any

import nats

from taskflow.brokers.nats import NatsBroker
from taskflow.clock import Clock
from taskflow.results.nats import NatsResultStore
from tests.conftest import require_service

URL = "nats://127.0.0.1:4222"


async def _delete_streams(names: list[str]) -> None:
    """Delete streams (a KV bucket is the stream ``KV_<bucket>``) on a short connection."""
    nc = await nats.connect(URL)
    try:
        js = nc.jetstream()
        for name in names:
            with contextlib.suppress(Exception):
                await js.delete_stream(name)
    finally:
        await nc.close()


class _CleanNatsBroker(NatsBroker):
    """A NatsBroker that deletes its streams and state bucket when first closed."""

    _cleaned = False

    async def close(self) -> None:
        await super().close()
        if not self._cleaned:
            self._cleaned = True
            await _delete_streams([self.work, self.delays, self.dlq, f"KV_{self.state_bucket}"])


class _CleanNatsResultStore(NatsResultStore):
    """A NatsResultStore that deletes its bucket when first closed."""

    _cleaned = False

    async def close(self) -> None:
        await super().close()
        if not self._cleaned:
            self._cleaned = True
            await _delete_streams([f"KV_{self.bucket}"])


def _prefix() -> str:
    return f"tftest{uuid.uuid4().hex[:12]}"


async def nats_broker(clock: Clock | None, lease: float) -> NatsBroker:
    """An unconnected broker on a fresh prefix (the server keeps time: ``clock`` unused)."""
    require_service("nats", "127.0.0.1", 4222)
    return _CleanNatsBroker(URL, prefix=_prefix(), lease=lease)


async def nats_store(clock: Clock | None) -> NatsResultStore:
    """An unconnected result store on a fresh prefix."""
    require_service("nats", "127.0.0.1", 4222)
    return _CleanNatsResultStore(URL, prefix=_prefix(), clock=clock)


def register(brokers: dict[str, Any], stores: dict[str, Any]) -> None:
    """Add the nats factories to the contract suites' registries."""
    brokers["nats"] = nats_broker
    stores["nats"] = nats_store
