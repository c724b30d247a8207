"""What one worker has done: counters by outcome, reported by ``Worker.stats()``."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..message import TaskStatus

__all__ = ["WorkerStats"]


@dataclass(slots=True)
class WorkerStats:
    """Counters of one worker since it was built."""

    processed: int = 0
    """Attempts that ended here, whatever their outcome (run, cancelled or handed back);
    not a message given up before it started because its lease had run out, nor one whose
    child process died (its attempt goes on with the broker's next delivery of it)."""
    succeeded: int = 0
    failed: int = 0
    retried: int = 0
    cancelled: int = 0
    expired: int = 0
    dead_lettered: int = 0
    """Messages this worker moved to a dead-letter list (failed ones and undecodable ones)."""
    requeued: int = 0
    """Messages handed back to the broker uncounted (stopping)."""
    loop_stalls: int = 0
    """Times the event loop stopped turning long enough to warn (:mod:`.stalls`)."""

    def count(self, status: TaskStatus, dead_lettered: bool = False) -> None:
        """One message settled with ``status`` (and dead-lettered, if it was)."""
        if status is TaskStatus.SUCCEEDED:
            self.succeeded += 1
        elif status is TaskStatus.FAILED:
            self.failed += 1
        elif status is TaskStatus.RETRYING:
            self.retried += 1
        elif status is TaskStatus.CANCELLED:
            self.cancelled += 1
        elif status is TaskStatus.EXPIRED:
            self.expired += 1
        if dead_lettered:
            self.dead_lettered += 1

    def as_dict(self) -> dict[str, int]:
        """The counters by name."""
        return dataclasses.asdict(self)
