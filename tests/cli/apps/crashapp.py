"""An app whose broker cannot fetch: every fetch raises an error that is not an outage.

A worker of it loses its fetch stage (a bug, not a backend being down), which must take the
process down with a non-zero exit status so that a supervisor restarts it.
"""

from __future__ import annotations

from collections.abc import Sequence

from taskflow import App
from taskflow.brokers.base import Delivery
from taskflow.brokers.memory import MemoryBroker


class BrokenFetchBroker(MemoryBroker):
    """A memory broker whose fetch fails with an unexpected error, every time."""

    async def fetch(
        self, queues: Sequence[str], max_messages: int, timeout: float
    ) -> list[Delivery]:
        raise RuntimeError("fetch is broken")


app = App("cli-crash", broker=BrokenFetchBroker())
