"""An app's broker and result store, connected together on first use.

Nothing connects at import or when an app is built: the first send, lookup or worker does,
and concurrent first uses share one connection attempt. Queues are declared once per
connection (a bounded queue gets its limit then).
"""

from __future__ import annotations

import asyncio

from ..brokers.base import Broker
from ..results.base import ResultStore
from .settings import Settings

__all__ = ["Backends"]


class Backends:
    """The broker and result store of one app, with their connection state."""

    def __init__(self, broker: Broker, results: ResultStore, settings: Settings) -> None:
        self.broker = broker
        self.results = results
        self._settings = settings
        self._lock: asyncio.Lock | None = None
        self.connected = False
        """True once both are connected (until :meth:`close`); read-only."""
        self.declared: set[str] = set()
        """The queues declared on this connection; read-only."""
        self.records_linked = broker.link_records(results.record_location())
        """Whether the broker marks the store's records running as it leases their
        messages (``Broker.fetch_starting``); read-only."""

    async def connect(self) -> None:
        """Connect both (once; concurrent callers wait for the same attempt)."""
        if self.connected:
            return
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if not self.connected:
                await self.broker.connect()
                await self.results.connect()
                self.connected = True

    async def declare(self, queue: str) -> None:
        """Declare ``queue`` on the broker (once per connection), with its length limit."""
        if queue not in self.declared:
            await self.broker.declare(queue, max_length=self._settings.queue_limit(queue))
            self.declared.add(queue)

    async def close(self) -> None:
        """Close both; the next use connects again."""
        if self.connected:
            self.connected = False
            self.declared.clear()
            await self.broker.close()
            await self.results.close()
