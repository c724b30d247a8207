"""Task events: what they are (:class:`TaskEvent`, :class:`HookKind`) and their fan-out to
subscribers with bounded buffers.

The fan-out serves ``Worker.subscribe()`` (one worker's events) and ``App.events()`` (every
worker of the app: in-process for the memory backend, through the result store's pub/sub
for Redis and NATS).
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from ._waiters import wait_limit

__all__ = [
    "HOOK_KINDS",
    "EventBus",
    "HookKind",
    "Subscription",
    "TaskEvent",
    "event_from_dict",
    "event_to_dict",
]


class HookKind(StrEnum):
    """What a hook is called for (``app.hook(kind)``); equal to its plain string."""

    QUEUED = "queued"
    START = "start"
    SUCCESS = "success"
    FAILURE = "failure"
    RETRY = "retry"
    CANCEL = "cancel"
    FINISH = "finish"


HOOK_KINDS = frozenset(HookKind)


@dataclass(frozen=True, slots=True)
class TaskEvent:
    """Something that happened to a task. ``timestamp`` is epoch seconds; ``duration`` is
    the attempt's run time in seconds (None before it ran); ``root_id`` and ``parent_id``
    are the task's lineage (``TaskContext``)."""

    kind: str
    task_id: str
    task_name: str
    queue: str
    status: str
    attempt: int
    result: Any = None
    error: dict[str, str] | None = None
    timestamp: float = 0.0
    duration: float | None = None
    root_id: str | None = None
    parent_id: str | None = None


_FIELDS = tuple(f.name for f in dataclasses.fields(TaskEvent))


def event_to_dict(event: TaskEvent) -> dict[str, Any]:
    """A JSON-friendly form of ``event`` (results are left to the publisher's encoder)."""
    return {name: getattr(event, name) for name in _FIELDS}


def event_from_dict(data: Mapping[str, Any]) -> TaskEvent:
    """Rebuild a :class:`TaskEvent` published by another process."""
    values: dict[str, Any] = {name: data[name] for name in _FIELDS if name in data}
    return TaskEvent(**values)


class Subscription:
    """A bounded buffer of events for one subscriber.

    A full buffer loses the incoming event (``drop="newest"``) or the oldest buffered one
    (``drop="oldest"``); :attr:`dropped` counts the losses. Publishing never blocks.
    """

    def __init__(
        self, bus: EventBus, buffer: int, drop: str, on_close: Callable[[], None] | None = None
    ) -> None:
        if isinstance(buffer, bool) or not isinstance(buffer, int) or buffer < 1:
            raise ValueError(f"subscribe: buffer must be a positive integer, got {buffer!r}")
        if drop not in ("newest", "oldest"):
            raise ValueError(f"subscribe: drop must be 'newest' or 'oldest', got {drop!r}")
        self._bus = bus
        self._buffer: deque[TaskEvent] = deque()
        self._size = buffer
        self._drop_oldest = drop == "oldest"
        self._cond = threading.Condition()
        self._closed = False
        self._on_close = on_close
        self.dropped = 0

    def offer(self, event: TaskEvent) -> None:
        """Buffer ``event`` for this subscriber (what publishing does; never blocks)."""
        with self._cond:
            if self._closed:
                return
            if len(self._buffer) >= self._size:
                self.dropped += 1
                if not self._drop_oldest:
                    return
                self._buffer.popleft()
            self._buffer.append(event)
            self._cond.notify()

    def get(self, timeout: float | None = None) -> TaskEvent:
        """The next event; raises ``TimeoutError`` after ``timeout`` s or once closed."""
        limit = wait_limit(timeout)
        deadline = None if limit is None else time.monotonic() + limit
        with self._cond:
            while not self._buffer:
                if self._closed:
                    raise TimeoutError("subscription closed")
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise TimeoutError("no event within the timeout")
                self._cond.wait(remaining)
            return self._buffer.popleft()

    def __iter__(self) -> Iterator[TaskEvent]:
        while True:
            try:
                yield self.get()
            except TimeoutError:
                return

    def close(self) -> None:
        """Stop receiving; iteration ends once the buffer is drained."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify_all()
        self._bus.remove(self)
        if self._on_close is not None:
            self._on_close()

    @property
    def closed(self) -> bool:
        """True after :meth:`close` or when the worker stopped."""
        return self._closed

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class EventBus:
    """Delivers each published event to every open subscription."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._subs: tuple[Subscription, ...] = ()
        self.active = False
        """True if anyone listens (an attribute, not a property: every task's outcome
        asks)."""

    def subscribe(
        self, buffer: int = 100, drop: str = "newest", on_close: Callable[[], None] | None = None
    ) -> Subscription:
        """A new subscription (``on_close`` runs once when it is closed)."""
        sub = Subscription(self, buffer, drop, on_close)
        with self._lock:
            self._subs = (*self._subs, sub)
            self.active = True
        return sub

    def remove(self, sub: Subscription) -> None:
        """Stop delivering to ``sub`` (what closing it does)."""
        with self._lock:
            self._subs = tuple(s for s in self._subs if s is not sub)
            self.active = bool(self._subs)

    def publish(self, event: TaskEvent) -> None:
        """Offer ``event`` to every subscriber (never blocks)."""
        for sub in self._subs:
            sub.offer(event)

    def close_all(self) -> None:
        """Close every subscription (the worker stopped)."""
        for sub in self._subs:
            sub.close()
