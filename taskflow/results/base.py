"""The result-store interface: task records plus a few atomic primitives.

Records are flat dicts of JSON-safe values (see :class:`TaskInfo` for the fields). The one
rule every store enforces atomically: **a terminal record never changes again**
(:meth:`ResultStore.update` returns ``None`` and writes nothing), with one exception, an
explicit operator action: :meth:`ResultStore.restart` starts a new cycle of a terminal
record (a dead letter replayed), keeping the earlier outcome in the record's ``history``.
Group/chord counters, idempotency keys and waiting are written once, on top of these
primitives. Stores also keep the workers' heartbeats and the admin audit trail, each entry
with its own retention (:meth:`ResultStore.put_worker`, :meth:`ResultStore.add_audit`).
Every store must pass ``tests/contract/test_results_contract.py``.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar

from ..clock import utc
from ..message import TERMINAL_STATUSES, TaskStatus
from ..urls import mask_url

__all__ = [
    "HISTORY_FIELDS",
    "TERMINAL_VALUES",
    "ResultStore",
    "StoreCapabilities",
    "TaskInfo",
    "is_terminal",
    "restarted",
]

TERMINAL_VALUES = frozenset(s.value for s in TERMINAL_STATUSES)

HISTORY_FIELDS = ("status", "error", "attempts", "finished_at", "worker")
"""What a history entry keeps of an earlier cycle (``None`` where the record had none)."""
_CYCLE_FIELDS = ("result", "error", "started_at", "finished_at", "worker")
"""Fields of one cycle's outcome, dropped when a new cycle starts."""


def is_terminal(record: Mapping[str, Any] | None) -> bool:
    """True if ``record`` has a terminal status."""
    return record is not None and record.get("status") in TERMINAL_VALUES


@dataclass(frozen=True, slots=True)
class StoreCapabilities:
    """What a result store can do."""

    events: bool = False
    """``publish_event`` reaches ``subscribe_events`` in other processes."""
    blocking: bool = False
    """``wait_blocking`` and ``create_many_blocking`` may be called from any thread without
    the app's loop (an in-process store)."""
    atomic_create: bool = False
    """``create_many`` is atomic per record, so enqueue may write records and publish at
    the same time (a worker's later update can never be overwritten by the queued one)."""
    blocking_create: bool = False
    """``create_many_blocking`` may be called from any thread without the app's loop (a
    store with a synchronous connection of its own, or an in-process one): a blocking
    ``delay()`` of a task that stores its result then needs no hop onto the loop."""
    fork_safe: bool = False
    """Its blocking calls open connections of their own in a process forked from one that
    used the store (see ``Capabilities.fork_safe`` of brokers)."""


def restarted(record: Mapping[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    """The record that :meth:`ResultStore.restart` writes over the terminal ``record``."""
    entry = {name: record.get(name) for name in HISTORY_FIELDS}
    fresh = {k: v for k, v in record.items() if k not in _CYCLE_FIELDS}
    fresh["history"] = [*(record.get("history") or ()), entry]
    fresh.update(changes)
    return fresh


def _ts(value: Any) -> datetime | None:
    return None if value is None else utc(float(value))


@dataclass(frozen=True, slots=True)
class TaskInfo:
    """A snapshot of one task's record, as returned by ``AsyncResult.info()``."""

    id: str
    name: str
    status: TaskStatus
    queue: str
    priority: int
    attempts: int
    result: Any
    error: dict[str, str] | None
    created_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    worker: str | None
    history: list[dict[str, Any]] = field(default_factory=list)
    """Earlier cycles of a replayed task, oldest first: ``status``, ``error``, ``attempts``,
    ``finished_at`` (a datetime) and ``worker`` of each."""
    root_id: str | None = None
    """The first task of this task's canvas or of the tasks that sent it (None: on its own)."""
    parent_id: str | None = None
    """The task that sent this one or preceded it in a canvas (None: sent on its own)."""

    @classmethod
    def from_record(cls, record: Mapping[str, Any], result: Any = None) -> TaskInfo:
        """Build from a stored record; ``result`` is the decoded result value."""
        return cls(
            id=str(record["id"]),
            name=str(record.get("name", "")),
            status=TaskStatus(record.get("status", "pending")),
            queue=str(record.get("queue", "")),
            priority=int(record.get("priority", 0)),
            attempts=int(record.get("attempts", 0)),
            result=result,
            error=record.get("error"),
            created_at=_ts(record.get("created_at")),
            started_at=_ts(record.get("started_at")),
            finished_at=_ts(record.get("finished_at")),
            worker=record.get("worker"),
            history=[
                {**entry, "finished_at": _ts(entry.get("finished_at"))}
                for entry in record.get("history") or ()
                if isinstance(entry, Mapping)
            ],
            root_id=record.get("root_id"),
            parent_id=record.get("parent_id"),
        )


class ResultStore(abc.ABC):
    """Where task records, counters and small keys live."""

    capabilities: ClassVar[StoreCapabilities] = StoreCapabilities()
    url: str = ""

    def __repr__(self) -> str:
        # The URL may carry a password or a token: show it masked.
        return f"<{type(self).__name__} {mask_url(self.url)}>"

    @abc.abstractmethod
    async def connect(self) -> None:
        """Open connections (bounded time; BrokerError if unreachable)."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release resources. Idempotent."""

    @abc.abstractmethod
    async def get(self, task_id: str) -> dict[str, Any] | None:
        """The record, or None."""

    async def get_many(self, task_ids: Sequence[str]) -> list[dict[str, Any] | None]:
        """Records for ``task_ids`` in order (stores override to batch)."""
        return [await self.get(tid) for tid in task_ids]

    @abc.abstractmethod
    async def update(
        self, task_id: str, changes: Mapping[str, Any], ttl: float | None
    ) -> dict[str, Any] | None:
        """Atomically merge ``changes`` into the record (creating it if absent).

        Returns the merged record, or ``None`` without writing if the stored record is
        already terminal. ``ttl`` (seconds, None: keep) applies to the whole record.
        """

    @abc.abstractmethod
    async def restart(self, task_id: str, changes: Mapping[str, Any]) -> dict[str, Any] | None:
        """Atomically start a new cycle of a *terminal* record: the one exception to
        "a terminal record never changes", for an operator's replay.

        The record's outcome (see :data:`HISTORY_FIELDS`) is appended to its ``history``
        list, the cycle's fields (result, error, started_at, finished_at, worker) are
        dropped, ``changes`` are merged (a replay sets ``status: queued``) and the record
        loses its expiry (it is live again); see :func:`restarted`. Returns the new
        record, or ``None`` without writing if the record is absent or not terminal, so
        of two concurrent restarts exactly one succeeds.
        """

    async def restart_many(
        self, items: Sequence[tuple[str, Mapping[str, Any]]]
    ) -> list[dict[str, Any] | None]:
        """:meth:`restart` of many records (each one still atomic), results in order; a
        store may pipeline them (a bulk replay)."""
        return [await self.restart(task_id, changes) for task_id, changes in items]

    async def update_many(
        self, items: Sequence[tuple[str, Mapping[str, Any]]], ttl: float | None
    ) -> list[dict[str, Any] | None]:
        """:meth:`update` for many records (stores override to batch)."""
        return [await self.update(tid, changes, ttl) for tid, changes in items]

    async def create_many(
        self, items: Sequence[tuple[str, Mapping[str, Any]]], ttl: float | None
    ) -> list[bool]:
        """Write each record only where none exists yet; True where written.

        The default (get, then update) is not atomic; stores that override it atomically
        declare ``capabilities.atomic_create``.
        """
        written = []
        for task_id, record in items:
            fresh = await self.get(task_id) is None
            if fresh:
                await self.update(task_id, record, ttl)
            written.append(fresh)
        return written

    def wait_blocking(self, task_id: str, timeout: float | None) -> dict[str, Any] | None:
        """:meth:`wait` from any thread (only if ``capabilities.blocking``)."""
        raise NotImplementedError

    def create_many_blocking(
        self, items: Sequence[tuple[str, Mapping[str, Any]]], ttl: float | None
    ) -> list[bool]:
        """:meth:`create_many` from any thread (only if ``capabilities.blocking_create``)."""
        raise NotImplementedError

    def record_location(self) -> object | None:
        """Where this store keeps task records, for a broker on the same server that can
        mark them running as it leases their messages (``Broker.link_records``); None
        (the default): no broker can."""
        return None

    def begin_create_many_blocking(
        self, items: Sequence[tuple[str, Mapping[str, Any]]], ttl: float | None
    ) -> Callable[[], list[bool]]:
        """:meth:`create_many_blocking` in two steps: the records go out now, and the call
        returned (which must be made, once) waits for the store's answer or raises its
        error. In between, a ``delay()`` publishes its message, so that the two writes
        take one round trip of latency (with ``capabilities.atomic_create`` only: the
        worker may then update a record before it is created).

        By default the records are written here and the call returned hands back the
        answer; a store that can send without waiting overrides this.
        """
        written = self.create_many_blocking(items, ttl)
        return lambda: written

    @abc.abstractmethod
    async def delete(self, task_id: str) -> bool:
        """Forget a record; True if there was one."""

    @abc.abstractmethod
    async def wait(self, task_id: str, timeout: float | None) -> dict[str, Any] | None:
        """Wait (push-based) until the record is terminal; None if ``timeout`` ran out."""

    @abc.abstractmethod
    async def set_nx(self, key: str, value: str, ttl: float | None) -> str | None:
        """Set ``key`` if absent and return None; else return the existing value."""

    @abc.abstractmethod
    async def get_value(self, key: str) -> str | None:
        """The value of a key set with :meth:`set_nx`, or None."""

    @abc.abstractmethod
    async def delete_value(self, key: str) -> None:
        """Delete a key."""

    @abc.abstractmethod
    async def incr(self, key: str, amount: int = 1, ttl: float | None = None) -> int:
        """Atomically add ``amount`` to an integer counter and return the new value."""

    async def sweep(self) -> int:
        """Physically remove expired records and values now; returns how many.

        Expired entries read as absent at once on every store; this frees their storage.
        Stores that need it also run it on their own (memory: on writes, about once a
        minute; NATS: a janitor task); Redis expires keys itself (the default, 0).
        """
        return 0

    async def event_listeners(self) -> int:
        """How many ``subscribe_events`` readers there are (stores that can count say so;
        the default assumes one, so events are published whenever the store can)."""
        return 1 if self.capabilities.events else 0

    async def subscribe_events(self) -> AsyncIterator[dict[str, Any]]:
        """Events published by any process of the app (only if ``capabilities.events``)."""
        raise NotImplementedError(f"{type(self).__name__} cannot publish events")
        yield {}  # pragma: no cover - makes this an async generator

    async def publish_event(self, event: Mapping[str, Any]) -> None:  # noqa: B027
        """Publish a task event to other processes (if ``capabilities.events``)."""

    # -- worker heartbeats and the audit trail ---------------------------------------
    @abc.abstractmethod
    async def put_worker(self, info: dict[str, Any], *, retention: float) -> None:
        """Store a worker's heartbeat ``info`` (JSON-safe), replacing the one with the same
        ``info["id"]``; the entry disappears ``retention`` seconds after this write unless
        written again."""

    @abc.abstractmethod
    async def remove_worker(self, worker_id: str) -> None:
        """Remove a worker's entry at once (a clean stop); no error if there is none."""

    @abc.abstractmethod
    async def workers(self) -> list[dict[str, Any]]:
        """Every worker entry not past its retention, ordered by id."""

    @abc.abstractmethod
    async def add_audit(self, entry: dict[str, Any], *, retention: float) -> None:
        """Append an audit ``entry`` (JSON-safe, with ``at`` in epoch seconds); it
        disappears ``retention`` seconds after this write."""

    @abc.abstractmethod
    async def audit(self, limit: int = 100) -> list[dict[str, Any]]:
        """Up to ``limit`` audit entries not past their retention, newest first."""
