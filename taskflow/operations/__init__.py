"""The operations API behind ``app.admin``: queues, tasks, dead letters, workers, stats,
the audit trail and snapshots (see ``docs/operations.md``)."""

from __future__ import annotations

from ..errors import NotFound, UnknownQueue, Unsupported
from ._snapshot import ImportReport
from .admin import Admin, default_actor
from .types import (
    AuditEntry,
    ClusterStats,
    DeadLetter,
    Page,
    QueueInfo,
    QueueStats,
    ReplayReport,
    TaskInfo,
    TaskStats,
    WorkerInfo,
)

__all__ = [
    "Admin",
    "AuditEntry",
    "ClusterStats",
    "DeadLetter",
    "ImportReport",
    "NotFound",
    "Page",
    "QueueInfo",
    "QueueStats",
    "ReplayReport",
    "TaskInfo",
    "TaskStats",
    "UnknownQueue",
    "Unsupported",
    "WorkerInfo",
    "default_actor",
]
