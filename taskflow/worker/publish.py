"""Finish events beyond one worker: what ``App.events()`` reads.

With the memory backend they go to the app's in-process bus; with a result store that can
publish (Redis, NATS) they go through its pub/sub, so every process of the app sees them.
A remote publish costs a command per task, so it is only made while somebody listens
(checked at most once a second); events before a listener is noticed are not sent.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from ..eventbus import event_to_dict
from ..middleware import TaskEvent

if TYPE_CHECKING:
    from ..app import App

__all__ = ["EventPublisher"]

log = logging.getLogger("taskflow.worker")

_RECHECK = 1.0  # seconds between "is anybody listening?" checks


class EventPublisher:
    """Publishes one worker's finish events to the app's listeners, if there are any."""

    def __init__(self, app: App) -> None:
        self.app = app
        self._remote = app.results.capabilities.events
        self._listeners = 0
        self._checked = float("-inf")
        self._inflight: set[asyncio.Task[None]] = set()
        self._refreshing: asyncio.Future[None] | None = None

    async def wanted(self) -> bool:
        """True if a finish event would reach somebody now."""
        if not self._remote:
            return self.app._event_bus.active
        now = time.monotonic()
        if now - self._checked >= _RECHECK:
            self._checked = now
            self._refreshing = asyncio.ensure_future(self._refresh())
        if self._refreshing is not None and not self._refreshing.done():
            await asyncio.shield(self._refreshing)  # concurrent callers share one check
        return self._listeners > 0

    def publish(self, event: TaskEvent, encoded_result: Any = None) -> None:
        """Send ``event`` (the result in its encoded, JSON-safe form) without waiting."""
        if not self._remote:
            self.app._event_bus.publish(event)
            return
        data = event_to_dict(event)
        data["result"] = encoded_result
        self._spawn(self._send(data))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)

    async def _refresh(self) -> None:
        try:
            self._listeners = await self.app.results.event_listeners()
        except Exception as exc:
            log.debug("could not count event listeners: %s", exc)

    async def _send(self, data: dict[str, Any]) -> None:
        try:
            await self.app.results.publish_event(data)
        except Exception as exc:
            log.warning("could not publish the event of task %s: %s", data.get("task_id"), exc)

    async def drain(self, timeout: float = 5.0) -> None:
        """Wait (bounded) for events still being sent; called when the worker stops."""
        if self._inflight:
            await asyncio.wait(set(self._inflight), timeout=timeout)
