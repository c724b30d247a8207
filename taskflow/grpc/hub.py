"""The fan-out behind ``StreamEvents``: one app subscription, one bounded buffer per stream.

The server holds one :meth:`App.events` subscription (opened with the first stream, kept
until the server stops), read by one thread that hands each event to the server's event
loop. There every open stream whose filter selects the event gets it in its own bounded
buffer; a full buffer loses the event and counts it in that stream's ``dropped``. Nothing
here ever waits for a stream, so a slow client slows neither the workers nor the other
clients.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from collections.abc import Collection
from dataclasses import dataclass

from ..app import App
from ..eventbus import Subscription, TaskEvent

__all__ = ["EventHub", "Filter", "Listener"]

log = logging.getLogger("taskflow.grpc")

_APP_BUFFER = 10_000  # the shared subscription's buffer: the pump drains it at once


@dataclass(frozen=True, slots=True)
class Filter:
    """Which events a stream wants (an empty collection: any)."""

    tasks: Collection[str] = ()
    queues: Collection[str] = ()
    ids: Collection[str] = ()

    def selects(self, event: TaskEvent) -> bool:
        """True if ``event`` passes every non-empty criterion."""
        return (
            (not self.tasks or event.task_name in self.tasks)
            and (not self.queues or event.queue in self.queues)
            and (not self.ids or event.task_id in self.ids)
        )


class Listener:
    """One stream's bounded buffer (used on the server's event loop only)."""

    def __init__(self, select: Filter, size: int) -> None:
        self.select = select
        self.size = size
        self.dropped = 0
        """Events lost because the buffer was full."""
        self._buffer: deque[TaskEvent] = deque()
        self._ready = asyncio.Event()
        self.closed = False

    def offer(self, event: TaskEvent) -> None:
        """Buffer ``event`` or count it as dropped (never waits)."""
        if len(self._buffer) >= self.size:
            self.dropped += 1
            return
        self._buffer.append(event)
        self._ready.set()

    def lose(self, count: int) -> None:
        """Count events lost before they reached this stream's buffer."""
        self.dropped += count

    def close(self) -> None:
        """End the stream once its buffer is drained (the server stops)."""
        self.closed = True
        self._ready.set()

    async def next(self, timeout: float | None) -> TaskEvent | None:
        """The next event; ``None`` after ``timeout`` seconds without one or once closed."""
        while not self._buffer:
            if self.closed:
                return None
            self._ready.clear()
            try:
                await asyncio.wait_for(self._ready.wait(), timeout)
            except TimeoutError:
                return None
        return self._buffer.popleft()


class EventHub:
    """Feeds every open :class:`Listener` from the app's finish events."""

    def __init__(self, app: App) -> None:
        self._app = app
        self._listeners: set[Listener] = set()
        self._sub: Subscription | None = None
        self._thread: threading.Thread | None = None
        self._lock = asyncio.Lock()
        self._seen_dropped = 0
        self._stopped = False

    @property
    def listeners(self) -> int:
        """How many streams are open."""
        return len(self._listeners)

    async def open(self, select: Filter, size: int) -> Listener:
        """A new listener; the app subscription is in place when this returns."""
        async with self._lock:
            if self._sub is None:
                self._sub = await asyncio.to_thread(self._app.events, _APP_BUFFER, "oldest")
                loop = asyncio.get_running_loop()
                self._thread = threading.Thread(
                    target=self._pump,
                    args=(self._sub, loop),
                    name="taskflow-grpc-events",
                    daemon=True,
                )
                self._thread.start()
        listener = Listener(select, size)
        if self._stopped:
            listener.close()
        else:
            self._listeners.add(listener)
        return listener

    def remove(self, listener: Listener) -> None:
        """Stop feeding ``listener`` (its stream ended)."""
        self._listeners.discard(listener)

    def _pump(self, sub: Subscription, loop: asyncio.AbstractEventLoop) -> None:
        for event in sub:  # ends once the subscription is closed
            try:
                loop.call_soon_threadsafe(self._deliver, event, sub.dropped)
            except RuntimeError:  # the loop is closed: the server is gone
                return

    def _deliver(self, event: TaskEvent, app_dropped: int) -> None:
        lost = app_dropped - self._seen_dropped
        self._seen_dropped = app_dropped
        for listener in self._listeners:
            if lost:
                listener.lose(lost)
            if listener.select.selects(event):
                listener.offer(event)

    async def stop(self) -> None:
        """End every stream and close the app subscription."""
        self._stopped = True
        for listener in self._listeners:
            listener.close()
        self._listeners.clear()
        sub, thread = self._sub, self._thread
        self._sub = self._thread = None
        if sub is not None:
            sub.close()
        if thread is not None:
            await asyncio.to_thread(thread.join, 5.0)
