"""Operator actions on an app's queues and records: ``app.admin``.

The one operations API that the command line and other front ends build on. Every method
works from any process (it connects on first use) and has an ``a``-prefixed coroutine
twin (``await app.admin.areplay(queue)``).

Brokers move opaque bodies; what an action means for a task is decided here: a replayed
dead letter is re-encoded as attempt 1 of a new cycle (its record restarted, the earlier
outcome kept in ``history``), a purged message's record is closed as ``cancelled``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from . import codec
from .brokers.base import BrokerAdmin, Message
from .brokers.base import DeadLetter as BrokerDeadLetter
from .errors import ConfigError, PayloadError
from .kernel import Kernel
from .message import TaskStatus
from .results.base import is_terminal
from .urls import mask_url

__all__ = ["Admin", "DeadLetter"]

T = TypeVar("T")

_EVERY = 1_000_000_000  # "no limit" for the broker's dead-letter listing
_OUTCOME = ("status", "error", "attempts", "finished_at", "worker")
_NEW_CYCLE = {"status": TaskStatus.QUEUED.value, "attempts": 0}


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


class Admin:
    """Operations on the app's queues: ``app.admin``."""

    def __init__(self, kernel: Kernel) -> None:
        self._kernel = kernel

    def __repr__(self) -> str:
        return f"<Admin of {self._kernel!r}>"

    # -- plumbing --------------------------------------------------------------------
    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self._kernel.call(coro)

    async def _broker(self) -> BrokerAdmin:
        await self._kernel.connect()
        broker = self._kernel.broker
        if not isinstance(broker, BrokerAdmin):
            raise ConfigError(f"broker {mask_url(broker.url)!r} has no admin operations")
        return broker

    # -- dead letters ----------------------------------------------------------------
    def dead_letters(self, queue: str, *, limit: int = 100) -> list[DeadLetter]:
        """The dead letters of ``queue``, oldest first (at most ``limit``)."""
        return self._run(self.adead_letters(queue, limit=limit))

    async def adead_letters(self, queue: str, *, limit: int = 100) -> list[DeadLetter]:
        """:meth:`dead_letters` for async code."""
        return await self._kernel.acall(self._dead_letters(queue, limit))

    async def _dead_letters(self, queue: str, limit: int) -> list[DeadLetter]:
        broker = await self._broker()
        return [_view(letter) for letter in await broker.dead_letters(queue, limit)]

    def replay(self, queue: str, *, ids: Sequence[str] | None = None) -> int:
        """Run dead-lettered tasks again (all of ``queue``'s, or those with ``ids``).

        Each one starts a new cycle under its id: attempt 1 with its full retry budget,
        its record back to ``queued`` with the earlier outcome appended to ``history``.
        A dead letter is moved at most once, so concurrent replays never make two live
        copies of one task. Returns how many were replayed.
        """
        return self._run(self.areplay(queue, ids=ids))

    async def areplay(self, queue: str, *, ids: Sequence[str] | None = None) -> int:
        """:meth:`replay` for async code."""
        return await self._kernel.acall(self._replay(queue, ids))

    async def _replay(self, queue: str, ids: Sequence[str] | None) -> int:
        broker = await self._broker()
        letters = await broker.dead_letters(queue, _EVERY)
        if ids is not None:
            wanted = set(ids)
            letters = [d for d in letters if d.id in wanted]
        messages = list({d.id: _fresh_message(self._kernel, d, queue) for d in letters}.values())
        if not messages:
            return 0
        results = self._kernel.results
        # The record goes back to queued *before* the message is live again: a worker that
        # found it still terminal would settle the message without running it.
        restarted = {}
        for msg in messages:
            record = await results.restart(msg.id, _NEW_CYCLE)
            if record is not None:
                restarted[msg.id] = record
        try:
            moved = set(await broker.requeue(queue, messages))
        except BaseException:
            for task_id, record in restarted.items():
                await self._undo_restart(task_id, record)
            raise
        for task_id, record in restarted.items():
            if task_id not in moved:  # replayed by someone else meanwhile, or gone
                await self._undo_restart(task_id, record)
        return len(moved)

    async def _undo_restart(self, task_id: str, record: dict[str, Any]) -> None:
        """Give a restarted record its earlier outcome back (its message did not move)."""
        history = list(record.get("history") or ())
        if not history:
            return
        last = history.pop()
        changes = {k: last.get(k) for k in _OUTCOME if last.get(k) is not None}
        await self._kernel.results.update(
            task_id, {**changes, "history": history}, self._kernel.settings.result_ttl
        )

    # -- purge -----------------------------------------------------------------------
    def purge(self, queue: str, *, scheduled: bool = False) -> int:
        """Drop ``queue``'s waiting messages (ready ones; with ``scheduled`` also those
        due later). Their records become ``cancelled`` (reason ``purged``) and expire like
        any finished record. Running tasks are not touched. Returns how many."""
        return self._run(self.apurge(queue, scheduled=scheduled))

    async def apurge(self, queue: str, *, scheduled: bool = False) -> int:
        """:meth:`purge` for async code."""
        return await self._kernel.acall(self._purge(queue, scheduled))

    async def _purge(self, queue: str, scheduled: bool) -> int:
        broker = await self._broker()
        ids = await broker.purge_ids(queue, scheduled=scheduled)
        if not ids:
            return 0
        results = self._kernel.results
        records = await results.get_many(ids)
        now = self._kernel.clock.time()
        closed = {
            "status": TaskStatus.CANCELLED.value,
            "reason": "purged",
            "finished_at": now,
        }
        # Only records that exist: a task that stores no result has none to close.
        updates = [
            (tid, closed)
            for tid, record in zip(ids, records, strict=True)
            if record is not None and not is_terminal(record)
        ]
        if updates:
            await results.update_many(updates, self._kernel.settings.result_ttl)
        return len(ids)


def _view(letter: BrokerDeadLetter) -> DeadLetter:
    try:
        env = codec.decode_envelope(letter.body)
        task, attempts = env.task, env.attempt
    except PayloadError:
        task, attempts = "", 0
    return DeadLetter(
        task_id=letter.id,
        task=task,
        queue=letter.queue,
        reason=letter.reason,
        error=letter.error,
        attempts=attempts,
        dead_at=datetime.fromtimestamp(letter.failed_at, tz=UTC) if letter.failed_at else None,
    )


def _fresh_message(kernel: Kernel, letter: BrokerDeadLetter, queue: str) -> Message:
    """The message that runs a dead letter again: attempt 1, due now, a full budget.

    A body that cannot be decoded goes back unchanged (a worker that learnt to read it
    may run it; any other dead-letters it again).
    """
    try:
        env = codec.decode_envelope(letter.body)
    except PayloadError:
        return Message(
            letter.id,
            queue,
            letter.body,
            int(letter.extra.get("priority", 0)),
            None,
            int(letter.extra.get("max_deliveries", 1)),
        )
    msg = kernel.enqueuer.message(env.replace(attempt=1, eta=None))
    return dataclasses.replace(msg, id=letter.id, queue=queue, eta=None)
