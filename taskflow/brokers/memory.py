"""The in-memory broker: the reference implementation of the broker contract.

Thread-safe and loop-agnostic: producers on any thread and workers on any event loop share
one instance. It has delays, strict priorities, leases with fencing, bounded queues, a
dead-letter list per queue, pause/resume and an in-process control channel.

The messages live in a :class:`~taskflow.brokers._memory_state.MemoryState`; the broker
and its :class:`~taskflow.brokers._memory_admin.MemoryAdmin` both work on it.
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

from .._waiters import Waiters, wait_future
from ..clock import SYSTEM_CLOCK, Clock
from ..urls import url_kwargs
from ._memory_admin import MemoryAdmin
from ._memory_limits import MemoryLimiter
from ._memory_state import MemoryState, Stored
from .base import Broker, Capabilities, DelegatedAdmin, Delivery, FetchResult, Message
from .limits import ClusterLimiter

__all__ = ["MemoryBroker", "MemoryDelivery"]

Settle = Callable[..., bool]
"""``settle(id, token, action, **arguments)``: see :meth:`MemoryState.settle`."""


def _current_task() -> asyncio.Task[Any]:
    task = asyncio.current_task()
    if task is None:
        raise RuntimeError("control messages are read from inside an asyncio task")
    return task


class MemoryDelivery(Delivery):
    """A leased delivery from :class:`MemoryBroker`."""

    __slots__ = ("_lease", "_settle", "_token")

    def __init__(self, settle: Settle, lease: float, stored: Stored) -> None:
        super().__init__(stored.id, stored.queue, stored.body, stored.priority, stored.deliveries)
        self._settle = settle
        self._lease = lease
        self._token = stored.token

    @property
    def lease(self) -> float | None:
        """The broker's lease length."""
        return self._lease

    async def ack(self) -> bool:
        """Remove the message."""
        return self._settle(self.id, self._token, "ack")

    async def nack(self, *, requeue: bool = True) -> bool:
        """Hand the message back uncounted (or drop it)."""
        return self._settle(self.id, self._token, "requeue" if requeue else "ack")

    async def retry(self, body: bytes, delay: float, *, max_deliveries: int = 1) -> bool:
        """Replace the message with ``body`` due in ``delay`` seconds."""
        return self._settle(
            self.id, self._token, "retry", body=body, delay=delay, max_deliveries=max_deliveries
        )

    async def touch(self) -> bool:
        """Renew the lease."""
        return self._settle(self.id, self._token, "touch")

    async def dead_letter(self, reason: str, error: str | None = None) -> bool:
        """Move to the dead-letter list."""
        return self._settle(self.id, self._token, "dead", reason=reason, error=error)


class MemoryBroker(Broker, DelegatedAdmin):
    """In-process broker for tests, examples and single-process apps.

    ``lease``: seconds a delivery stays leased before it is delivered again.
    ``clock``: time source for delays and leases (a :class:`~taskflow.clock.FakeClock` in tests).
    """

    capabilities: ClassVar[Capabilities] = Capabilities(blocking_publish=True)

    def __init__(self, *, lease: float = 30.0, clock: Clock | None = None) -> None:
        self.url = "memory://"
        self.lease = float(lease)
        self.clock: Clock = clock or SYSTEM_CLOCK
        self._state = MemoryState(self.lease, self.clock)
        self._admin = MemoryAdmin(self._state)
        self._limiter = MemoryLimiter(self.lease, self.clock)
        # Looked up once: every delivery settles through it (a subclass may wrap it).
        self._settle_delivery: Settle = self._settle
        self._control: list[dict[str, Any]] = []
        self._control_lock = threading.Lock()
        self._control_waiters = Waiters()
        # Weak keys: a finished reader's cursor goes with its task (no recycled id()s).
        self._control_cursors: weakref.WeakKeyDictionary[asyncio.Task[Any], int] = (
            weakref.WeakKeyDictionary()
        )

    def limiter(self) -> ClusterLimiter:
        """The in-process limiter: every worker on this broker shares it."""
        return self._limiter

    @classmethod
    def from_url(cls, url: str, *, clock: Clock | None = None) -> MemoryBroker:
        """Build from ``memory://`` (query option ``lease``)."""
        return cls(**url_kwargs(url, "broker", cls), clock=clock)

    # -- lifecycle -------------------------------------------------------------------
    async def connect(self) -> None:
        """Nothing to connect."""

    async def close(self) -> None:
        """Wake any waiting fetch; the data stays (the broker is the storage)."""
        self._state.waiters.notify_all()

    async def declare(self, queue: str, *, max_length: int | None = None) -> None:
        """Create ``queue``; ``max_length`` bounds ready + scheduled messages."""
        self._state.declare(queue, max_length)

    # -- publishing ------------------------------------------------------------------
    async def publish(self, messages: Sequence[Message]) -> None:
        """Publish all or nothing."""
        self._state.publish(messages)

    def publish_blocking(self, messages: Sequence[Message]) -> None:
        """Thread-safe synchronous publish."""
        self._state.publish(messages)

    # -- consuming -------------------------------------------------------------------
    async def fetch(self, queues: Sequence[str], max_messages: int, timeout: float) -> FetchResult:
        """Take up to ``max_messages`` ready deliveries, waiting up to ``timeout``."""
        got = await self._wait_and_take(queues, max_messages, timeout)
        return FetchResult(got, self._state.take_lost())

    async def _wait_and_take(
        self, queues: Sequence[str], max_messages: int, timeout: float
    ) -> list[Delivery]:
        state = self._state
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0.0, timeout)
        while True:
            with state.lock:
                got = self._take(queues, max_messages)
                if got or timeout <= 0:
                    return got
                fut = state.waiters.register_async()
                wait = deadline - loop.time()
                next_due = state.next_due()
            if next_due is not None:
                # None from a clock that moves only when told: its moves wake us instead.
                due_in = self.clock.real_timeout(next_due - self.clock.time())
                if due_in is not None:
                    wait = min(wait, max(0.0, due_in) + 0.0005)
            if wait <= 0:
                state.waiters.discard(fut)
                with state.lock:
                    return self._take(queues, max_messages)
            if not await wait_future(fut, wait):
                state.waiters.discard(fut)
            if loop.time() >= deadline:
                with state.lock:
                    return self._take(queues, max_messages)

    def _take(self, queues: Sequence[str], limit: int) -> list[Delivery]:
        # Called with the state's lock held, so each token is the one just leased out.
        settle, lease = self._settle_delivery, self.lease
        return [MemoryDelivery(settle, lease, s) for s in self._state.take(queues, limit)]

    def _settle(self, mid: str, token: int, action: str, **kw: Any) -> bool:
        return self._state.settle(mid, token, action, **kw)

    async def cancel(self, message_id: str, queue: str) -> bool:
        """Remove a ready or scheduled message."""
        return self._state.cancel(message_id, queue)

    # -- control channel -------------------------------------------------------------
    async def send_control(self, command: dict[str, Any]) -> None:
        """Broadcast to every worker polling :meth:`control_messages`."""
        with self._control_lock:
            self._control.append(command)
            if len(self._control) > 10_000:
                del self._control[:5_000]
                for reader, cursor in list(self._control_cursors.items()):
                    self._control_cursors[reader] = max(0, cursor - 5_000)
        self._control_waiters.notify_all()

    async def control_messages(self, timeout: float) -> list[dict[str, Any]]:
        """Commands sent since this task's previous call."""
        key = _current_task()
        with self._control_lock:
            cursor = self._control_cursors.setdefault(key, len(self._control))
            if cursor < len(self._control) or timeout <= 0:
                self._control_cursors[key] = len(self._control)
                return self._control[cursor:]
            fut = self._control_waiters.register_async()
        if not await wait_future(fut, timeout):
            self._control_waiters.discard(fut)
        with self._control_lock:
            self._control_cursors[key] = len(self._control)
            return self._control[cursor:]

    def forget_control_reader(self) -> None:
        """Drop the current task's control cursor (called when a worker stops)."""
        with self._control_lock:
            self._control_cursors.pop(_current_task(), None)
