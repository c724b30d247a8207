"""Announcing what happened to a task: every event of a worker goes out here, once.

:class:`Announcer` runs the app's hooks and the task's own (resolved once, on its
``TaskDef``), publishes terminal events as ``finish`` events to the worker's subscribers
(``Worker.subscribe()``) and to the app's listeners (``App.events()``), and writes the one
log line of each outcome, which names the task and its id but never its arguments or its
result.

Beyond one worker, finish events go to the app's in-process bus with the memory backend,
and through the result store's pub/sub with Redis and NATS, so every process of the app
sees them. A remote publish costs a command per task, so it is made only while somebody
listens (checked at most once a second); events before a listener is noticed are not sent.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from typing import Any, Protocol

from .._masking import shown
from ..clock import Clock
from ..eventbus import EventBus, HookKind, TaskEvent, event_to_dict
from ..kernel import Kernel, TaskDef
from ..message import Envelope, TaskStatus

__all__ = ["Announcer", "EventPublisher", "Subject"]

log = logging.getLogger("taskflow.worker")

_RECHECK = 1.0  # seconds between "is anybody listening?" checks

# The hook kind of each outcome; terminal ones are followed by a "finish" event.
_HOOK = {
    TaskStatus.SUCCEEDED: HookKind.SUCCESS.value,
    TaskStatus.FAILED: HookKind.FAILURE.value,
    TaskStatus.CANCELLED: HookKind.CANCEL.value,
    TaskStatus.EXPIRED: HookKind.CANCEL.value,
    TaskStatus.RETRYING: HookKind.RETRY.value,
}
_FINISH = HookKind.FINISH.value
_START = HookKind.START.value


class Subject(Protocol):
    """What an outcome is about: a job, or a message that never ran (its task may be
    unknown to this worker)."""

    @property
    def envelope(self) -> Envelope: ...

    @property
    def attempt(self) -> int: ...

    @property
    def task(self) -> TaskDef | None: ...

    @property
    def stores(self) -> bool:
        """Whether the task's outcome is written to the result store."""
        ...


class Announcer:
    """Hooks, subscribers, remote listeners and the log line, for one worker."""

    def __init__(self, kernel: Kernel, bus: EventBus, clock: Clock) -> None:
        self.hooks = kernel.hooks
        self.bus = bus
        self.clock = clock
        self.remote = EventPublisher(kernel)

    async def started(self, subject: Subject) -> None:
        """A task's attempt starts: its ``start`` hooks (there is no finish event yet)."""
        if not self.hooks.wants(_START, subject.task):
            return
        env = subject.envelope
        event = TaskEvent(
            _START,
            env.id,
            env.task,
            env.queue,
            TaskStatus.RUNNING.value,
            subject.attempt,
            timestamp=self.clock.time(),
            root_id=env.root_id,
            parent_id=env.parent_id,
        )
        await self.hooks.run(_START, event, subject.task)

    async def announce(
        self,
        subject: Subject,
        status: TaskStatus,
        *,
        result: Any = None,
        encoded: Any = None,
        error: dict[str, str] | None = None,
        duration: float | None = None,
        retry_in: float | None = None,
        level: int = logging.INFO,
    ) -> None:
        """A task's outcome is settled: hooks, then (for a terminal one) the finish event
        to the hooks, the subscribers and the app's listeners, then the log line.

        ``encoded`` is the result in its wire form, which remote listeners receive.
        """
        kind = _HOOK[status]
        hooks = self.hooks
        wants_hooks = hooks.wants(kind, subject.task) or hooks.wants(_FINISH)
        remote: bool | None = False
        if status.terminal:
            remote = self.remote.known()
            if remote is None:  # a check of the app's listeners is under way
                remote = await self.remote.wanted()
        if wants_hooks or self.bus.active or remote:
            env = subject.envelope
            event = TaskEvent(
                kind,
                env.id,
                env.task,
                env.queue,
                status.value,
                subject.attempt,
                result,
                error,
                self.clock.time(),
                duration,
                env.root_id,
                env.parent_id,
            )
            if wants_hooks:
                await hooks.run(kind, event, subject.task)
            if status.terminal:
                finish = TaskEvent(_FINISH, *_fields(event))
                if hooks.wants(_FINISH):
                    await hooks.run(_FINISH, finish)
                self.bus.publish(finish)
                if remote:
                    self.remote.publish(finish, encoded)
        if log.isEnabledFor(level):
            _log_line(subject, status, level, error=error, duration=duration, retry_in=retry_in)

    async def drain(self) -> None:
        """Wait (bounded) for remote events still being sent (the worker is stopping)."""
        await self.remote.drain()


def _log_line(
    subject: Subject,
    status: TaskStatus,
    level: int,
    *,
    error: dict[str, str] | None,
    duration: float | None,
    retry_in: float | None,
) -> None:
    env = subject.envelope
    # "after" is how long the attempt ran; a retry's delay is said separately.
    took = "" if duration is None else f" after {duration * 1000:.1f}ms"
    # The message may quote what the task was given: its control characters are escaped,
    # so that it cannot forge a log line (the record keeps it whole).
    why = f": {error['type']}: {shown(error['message'][:200])}" if error else ""
    if retry_in is None:
        log.log(
            level,
            "%s[%s] %s%s (attempt %d)%s",
            env.task,
            env.id,
            status.value,
            took,
            subject.attempt,
            why,
        )
        return
    log.log(
        level,
        "%s[%s] failed%s (attempt %d)%s; retry %d/%d in %.2fs",
        env.task,
        env.id,
        took,
        subject.attempt,
        why,
        subject.attempt,
        env.max_retries,
        retry_in,
    )


def _fields(event: TaskEvent) -> tuple[Any, ...]:
    return (
        event.task_id,
        event.task_name,
        event.queue,
        event.status,
        event.attempt,
        event.result,
        event.error,
        event.timestamp,
        event.duration,
        event.root_id,
        event.parent_id,
    )


class EventPublisher:
    """Publishes one worker's finish events to the app's listeners, if there are any."""

    def __init__(self, kernel: Kernel) -> None:
        self.kernel = kernel
        self._remote = kernel.results.capabilities.events
        self._listeners = 0
        self._checked = float("-inf")
        self._inflight: set[asyncio.Task[None]] = set()
        self._refreshing: asyncio.Future[None] | None = None

    def known(self) -> bool | None:
        """True if a finish event would reach somebody now; None while that is being
        checked (:meth:`wanted` waits for the answer). Starts that check when the last
        one is older than ``_RECHECK``. Every finished task asks: the answer is mostly
        known, and asking then makes no coroutine."""
        if not self._remote:
            return self.kernel.events.active
        now = time.monotonic()
        if now - self._checked >= _RECHECK:
            self._checked = now
            self._refreshing = asyncio.ensure_future(self._refresh())
        if self._refreshing is not None and not self._refreshing.done():
            return None
        return self._listeners > 0

    async def wanted(self) -> bool:
        """True if a finish event would reach somebody now (after the check under way)."""
        known = self.known()
        if known is not None:
            return known
        assert self._refreshing is not None
        await asyncio.shield(self._refreshing)  # concurrent callers share one check
        return self._listeners > 0

    def publish(self, event: TaskEvent, encoded_result: Any = None) -> None:
        """Send ``event`` (the result in its encoded, JSON-safe form) without waiting."""
        if not self._remote:
            self.kernel.events.publish(event)
            return
        data = event_to_dict(event)
        data["result"] = encoded_result
        self._spawn(self._send(data))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)

    async def _refresh(self) -> None:
        try:
            self._listeners = await self.kernel.results.event_listeners()
        except Exception as exc:
            log.debug("could not count event listeners: %s", exc)

    async def _send(self, data: dict[str, Any]) -> None:
        try:
            await self.kernel.results.publish_event(data)
        except Exception as exc:
            log.warning("could not publish the event of task %s: %s", data.get("task_id"), exc)

    async def drain(self, timeout: float = 5.0) -> None:
        """Wait (bounded) for events still being sent; called when the worker stops."""
        if self._inflight:
            await asyncio.wait(set(self._inflight), timeout=timeout)
