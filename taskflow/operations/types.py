"""The values the operations API returns (``app.admin``): plain frozen dataclasses."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, TypeVar

__all__ = [
    "AuditEntry",
    "ClusterStats",
    "DeadLetter",
    "Page",
    "QueueInfo",
    "QueueStats",
    "ReplayReport",
    "TaskInfo",
    "TaskStats",
    "WorkerInfo",
]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class QueueInfo:
    """One queue's counts, as the broker reports them."""

    name: str
    ready: int
    scheduled: int
    running: int
    """Messages delivered to a worker and not yet settled."""
    dead: int
    paused: bool


@dataclass(frozen=True, slots=True)
class TaskInfo:
    """One task as an operator sees it: its message (where it waits) and its record.

    Never its arguments. Fields the source does not know are ``None``.
    """

    id: str
    task: str
    """The task name (``""`` when neither the message nor a record names it)."""
    queue: str
    state: str
    """Where the message is: ``ready``, ``scheduled``, ``running`` or ``dead``; for
    :meth:`~taskflow.operations.Admin.task`, the record's status when no message is known."""
    status: str | None
    """The record's status (``queued``, ``failed``, ...); ``None`` without a record."""
    priority: int
    eta: datetime | None
    attempts: int
    error: dict[str, str] | None
    created_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    worker: str | None
    history: list[dict[str, Any]] = field(default_factory=list)
    """Earlier cycles (a replayed or retried task), oldest first: ``status``, ``error``,
    ``attempts``, ``finished_at`` (a datetime) and ``worker`` of each."""


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A dead-lettered task, as an operator sees it (never its arguments)."""

    task_id: str
    task: str
    """The task name, or ``""`` when the message cannot be decoded."""
    queue: str
    reason: str
    """``failed``, ``worker_lost``, ``not_registered``, ``undecodable``, ``payload``, ..."""
    error: str | None
    attempts: int
    """The attempt the task was on when it was dead-lettered."""
    dead_at: datetime | None


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    """One page of a listing; pass ``next_cursor`` back for the next (``None``: the end)."""

    items: list[T]
    next_cursor: str | None


@dataclass(frozen=True, slots=True)
class ReplayReport:
    """What a replay (or retry) matched, did, and left alone."""

    matched: int
    replayed: int
    skipped: dict[str, str] = field(default_factory=dict)
    """Task id -> why it was not sent again (at most 1,000 listed; ``matched`` counts all)."""
    dry_run: bool = False
    ids: list[str] = field(default_factory=list)
    """The ids replayed (or, in a dry run, that would be; at most 1,000 listed)."""


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    """A worker, from its last heartbeat."""

    id: str
    hostname: str
    pid: int
    queues: list[str]
    concurrency: int
    pool: str
    running: list[str]
    counters: dict[str, int]
    started_at: datetime | None
    last_seen: datetime | None
    heartbeat: float
    """Seconds between heartbeats."""
    state: str
    """``alive``, or ``lost`` when no heartbeat came for three intervals."""


@dataclass(frozen=True, slots=True)
class QueueStats:
    """A queue's counts in :class:`ClusterStats`."""

    name: str
    ready: int
    scheduled: int
    running: int
    dead: int
    paused: bool


@dataclass(frozen=True, slots=True)
class TaskStats:
    """Per task name: dead letters now waiting, and tasks running now (from heartbeats)."""

    task: str
    dead: int
    running: int


@dataclass(frozen=True, slots=True)
class ClusterStats:
    """The cluster at one instant.

    ``totals`` sums the counters of the live workers' heartbeats (``succeeded``,
    ``failed``, ...). ``rate_1m``/``rate_5m`` are per second: each ``stats()`` call stores
    a sample of every worker's counters in the result store (kept 6 minutes); a rate is
    the growth of each worker's counters since the newest sample at least 1 (5) minutes
    old, summed over the workers present in both, divided by the time between them.
    Empty until such a sample exists.
    """

    at: datetime
    queues: list[QueueStats]
    tasks: list[TaskStats]
    workers: int
    lost_workers: int
    totals: dict[str, int]
    rate_1m: dict[str, float]
    rate_5m: dict[str, float]
    dead_complete: bool = True
    """False when a queue had more dead letters than were counted per task (the per-task
    ``dead`` counts then cover the oldest 10,000 of each queue)."""
    alarms: list[str] = field(default_factory=list)
    """What the broker's server reports that stops or endangers delivery
    (``Admin.alarms``); empty when all is well."""


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One applied admin action."""

    at: datetime
    actor: str
    action: str
    """``replay``, ``discard``, ``purge``, ``cancel``, ``retry``, ``pause``, ``resume``,
    ``import``, ``reveal`` (a dead letter's arguments shown), or an action a front end
    recorded with :meth:`Admin.record` (the admin web service writes ``schedule_add``,
    ``schedule_pause``, ``schedule_resume`` and ``schedule_remove``)."""
    target: str
    """The queue (or ``*``) the action was about."""
    count: int
    """How many tasks it touched."""
    ids: list[str]
    """The first 100 of their ids."""
    details: dict[str, Any] = field(default_factory=dict)
