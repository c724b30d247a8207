"""``app.admin``: the one operations API that the command line and other front ends use.

Every method works from any process (it connects on first use) and has an ``a``-prefixed
coroutine twin (``await app.admin.areplay(queue)``). Applied actions write an audit entry
(who, what, which ids, when); dry runs change nothing and write none. An action whose
entry the result store refuses has still taken effect: it raises ``AuditNotWritten``
saying so, and the entry is logged on ``taskflow.audit`` instead.
"""

from __future__ import annotations

import getpass
import socket
from collections.abc import Coroutine, Sequence
from datetime import datetime
from typing import IO, Any, Final, TypeVar

from .._waiters import by_deadline
from ..errors import BrokerError, Unsupported
from ..kernel import Kernel
from . import _cluster, _dead, _queues, _snapshot
from ._context import Context
from ._dead import Filters
from ._snapshot import ImportReport
from .types import (
    AuditEntry,
    ClusterStats,
    DeadLetter,
    Page,
    QueueInfo,
    ReplayReport,
    TaskInfo,
    WorkerInfo,
)

__all__ = ["Admin", "default_actor"]

T = TypeVar("T")

READ_TIMEOUT: Final = 15.0
"""Seconds an operation that only reads (``queues``, ``peek``, ``paused``, ``task``,
``dead_letters``, ``workers``, ``stats``, ``audit``, ``reveal``) may take before it raises
BrokerError: past it, a server has stopped answering. Above the Redis ``CALL_TIMEOUT``
(10 s), so that a single call's error, which names its server, comes first. Operations
that change something are not bounded as a whole (a purge or a replay of a large queue
may take longer); each of their steps is, by the backend's own bound (docs/operations.md,
"A server stopped answering")."""


def default_actor() -> str:
    """``user@host`` of this process: who an admin action is recorded as by default."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


class Admin:
    """Operations on the app's queues, tasks, dead letters and workers: ``app.admin``.

    Unknown queues raise :class:`~taskflow.errors.UnknownQueue` (``no queue 'x' (known:
    a, b)``), unknown task ids :class:`~taskflow.errors.NotFound`; a question the backend
    cannot answer raises :class:`~taskflow.errors.Unsupported` naming the backend.
    """

    def __init__(self, kernel: Kernel, *, actor: str | None = None) -> None:
        """Operations on ``kernel``'s backends, audited as ``actor`` (default ``user@host``)."""
        self._kernel = kernel
        self._ctx = Context(kernel, default_actor() if actor is None else actor)

    def __repr__(self) -> str:
        return f"<Admin of {self._kernel!r} as {self.actor!r}>"

    @property
    def actor(self) -> str:
        """Who the audit trail names for this admin's actions."""
        return self._ctx.actor

    def as_actor(self, actor: str) -> Admin:
        """The same operations, audited as done by ``actor`` (an authenticated caller)."""
        return Admin(self._kernel, actor=actor)

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self._kernel.call(coro)

    async def _arun(self, coro: Coroutine[Any, Any, T]) -> T:
        return await self._kernel.acall(coro)

    def _look(self, coro: Coroutine[Any, Any, T]) -> T:
        """:meth:`_run` for an operation that only reads: bounded by ``READ_TIMEOUT``."""
        return self._kernel.call(self._bounded(coro))

    async def _alook(self, coro: Coroutine[Any, Any, T]) -> T:
        return await self._kernel.acall(self._bounded(coro))

    async def _bounded(self, coro: Coroutine[Any, Any, T]) -> T:
        boxed = await by_deadline(_boxed(coro), READ_TIMEOUT)
        if boxed is None:
            kernel = self._kernel
            raise BrokerError(
                f"no answer within {READ_TIMEOUT:.0f}s from {kernel.broker!r} or "
                f"{kernel.results!r}: a server stopped answering"
            )
        return boxed[0]

    # -- queues ----------------------------------------------------------------------
    def queues(self) -> list[QueueInfo]:
        """Every queue the broker knows: ready, scheduled, running, dead, paused."""
        return self._look(_queues.queues(self._ctx))

    async def aqueues(self) -> list[QueueInfo]:
        """:meth:`queues` for async code."""
        return await self._alook(_queues.queues(self._ctx))

    def peek(
        self, queue: str, state: str = "ready", limit: int = 20, offset: int = 0
    ) -> list[TaskInfo]:
        """Tasks of ``queue`` in ``state`` (``ready`` in delivery order, ``scheduled``,
        ``running``, ``dead`` oldest first), without arguments and without removing them."""
        return self._look(_queues.peek(self._ctx, queue, state, limit, offset))

    async def apeek(
        self, queue: str, state: str = "ready", limit: int = 20, offset: int = 0
    ) -> list[TaskInfo]:
        """:meth:`peek` for async code."""
        return await self._alook(_queues.peek(self._ctx, queue, state, limit, offset))

    def pause(self, queue: str) -> None:
        """Stop delivering from ``queue`` (publishing still works)."""
        self._run(_queues.set_paused(self._ctx, queue, True))

    async def apause(self, queue: str) -> None:
        """:meth:`pause` for async code."""
        await self._arun(_queues.set_paused(self._ctx, queue, True))

    def resume(self, queue: str) -> None:
        """Deliver from ``queue`` again."""
        self._run(_queues.set_paused(self._ctx, queue, False))

    async def aresume(self, queue: str) -> None:
        """:meth:`resume` for async code."""
        await self._arun(_queues.set_paused(self._ctx, queue, False))

    def paused(self) -> set[str]:
        """The queues paused now."""
        return self._look(self._paused())

    async def apaused(self) -> set[str]:
        """:meth:`paused` for async code."""
        return await self._alook(self._paused())

    async def _paused(self) -> set[str]:
        broker = await self._ctx.broker()
        try:
            return await broker.paused_queues()
        except Unsupported:  # RabbitMQ lists no queues: asked of each it has
            return await broker.paused_of(await self._ctx.queue_names())

    def purge(self, queue: str, *, scheduled: bool = False, dry_run: bool = False) -> int:
        """Drop ``queue``'s ready messages (with ``scheduled`` also those due later).

        Their records become ``cancelled`` (reason ``purged``) and expire like any
        finished record. Running tasks are not touched. Returns how many (with
        ``dry_run``, how many would be, changing nothing)."""
        return self._run(_dead.purge(self._ctx, queue, scheduled, dry_run))

    async def apurge(self, queue: str, *, scheduled: bool = False, dry_run: bool = False) -> int:
        """:meth:`purge` for async code."""
        return await self._arun(_dead.purge(self._ctx, queue, scheduled, dry_run))

    # -- tasks -----------------------------------------------------------------------
    def task(self, task_id: str) -> TaskInfo:
        """One task's record with its ``history``; NotFound if there is none."""
        return self._look(_queues.task(self._ctx, task_id))

    async def atask(self, task_id: str) -> TaskInfo:
        """:meth:`task` for async code."""
        return await self._alook(_queues.task(self._ctx, task_id))

    def cancel(self, task_id: str) -> bool:
        """Cancel a queued (never runs) or running (stopped) task; False if it had
        finished already. NotFound for an id without a record."""
        return self._run(_queues.cancel(self._ctx, task_id))

    async def acancel(self, task_id: str) -> bool:
        """:meth:`cancel` for async code."""
        return await self._arun(_queues.cancel(self._ctx, task_id))

    def retry(self, task_ids: Sequence[str]) -> int:
        """Send failed or cancelled tasks again under the same ids, with a new attempt
        budget (the earlier outcome kept in ``history``); how many were sent. See
        :meth:`retry_report` for why the others were not."""
        return self.retry_report(task_ids).replayed

    async def aretry(self, task_ids: Sequence[str]) -> int:
        """:meth:`retry` for async code."""
        return (await self.aretry_report(task_ids)).replayed

    def retry_report(self, task_ids: Sequence[str], *, dry_run: bool = False) -> ReplayReport:
        """:meth:`retry` with the details: each id not sent, with why (not found, not
        failed, or its message cannot be rebuilt because no dead letter holds it)."""
        return self._run(_dead.retry(self._ctx, task_ids, dry_run))

    async def aretry_report(
        self, task_ids: Sequence[str], *, dry_run: bool = False
    ) -> ReplayReport:
        """:meth:`retry_report` for async code."""
        return await self._arun(_dead.retry(self._ctx, task_ids, dry_run))

    # -- dead letters ----------------------------------------------------------------
    def dead_letters(
        self,
        queue: str | None = None,
        *,
        task: str | None = None,
        reason: str | None = None,
        since: datetime | float | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> Page[DeadLetter]:
        """One page of dead letters (all queues, or ``queue``), oldest first; pass
        ``page.next_cursor`` back as ``cursor`` for the next page."""
        filters = Filters.build(None, task, reason, since)
        return self._look(_dead.dead_letters(self._ctx, queue, filters, limit, cursor))

    async def adead_letters(
        self,
        queue: str | None = None,
        *,
        task: str | None = None,
        reason: str | None = None,
        since: datetime | float | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> Page[DeadLetter]:
        """:meth:`dead_letters` for async code."""
        filters = Filters.build(None, task, reason, since)
        return await self._alook(_dead.dead_letters(self._ctx, queue, filters, limit, cursor))

    def replay(
        self,
        queue: str | None = None,
        *,
        ids: Sequence[str] | None = None,
        task: str | None = None,
        reason: str | None = None,
        limit: int | None = None,
        dry_run: bool = False,
    ) -> ReplayReport:
        """Run matching dead letters again.

        Each one starts a new cycle under its id: attempt 1 with its full retry budget,
        its record back to ``queued`` with the earlier outcome appended to ``history``.
        A dead letter moves at most once, so replaying twice (or concurrently) never
        makes two live copies of one task: the loser reports it in ``skipped``.
        """
        filters = Filters.build(ids, task, reason, None)
        return self._run(_dead.replay(self._ctx, queue, filters, limit, dry_run))

    async def areplay(
        self,
        queue: str | None = None,
        *,
        ids: Sequence[str] | None = None,
        task: str | None = None,
        reason: str | None = None,
        limit: int | None = None,
        dry_run: bool = False,
    ) -> ReplayReport:
        """:meth:`replay` for async code."""
        filters = Filters.build(ids, task, reason, None)
        return await self._arun(_dead.replay(self._ctx, queue, filters, limit, dry_run))

    def discard(
        self,
        queue: str | None = None,
        *,
        ids: Sequence[str] | None = None,
        task: str | None = None,
        reason: str | None = None,
        dry_run: bool = False,
    ) -> int:
        """Delete matching dead letters for good; their records stay ``failed``. How many
        (with ``dry_run``, how many would be)."""
        filters = Filters.build(ids, task, reason, None)
        return self._run(_dead.discard(self._ctx, queue, filters, dry_run))

    async def adiscard(
        self,
        queue: str | None = None,
        *,
        ids: Sequence[str] | None = None,
        task: str | None = None,
        reason: str | None = None,
        dry_run: bool = False,
    ) -> int:
        """:meth:`discard` for async code."""
        filters = Filters.build(ids, task, reason, None)
        return await self._arun(_dead.discard(self._ctx, queue, filters, dry_run))

    # -- workers, stats, audit -------------------------------------------------------
    def workers(self) -> list[WorkerInfo]:
        """Workers from their heartbeats; ``state`` is ``lost`` after 3 silent intervals."""
        return self._look(_cluster.workers(self._ctx))

    async def aworkers(self) -> list[WorkerInfo]:
        """:meth:`workers` for async code."""
        return await self._alook(_cluster.workers(self._ctx))

    def alarms(self) -> list[str]:
        """What the broker's server says now that stops or endangers delivery, one
        sentence each (empty when all is well): Redis at 90% or more of its
        ``maxmemory``, set to evict keys, or refusing writes after a failed save;
        RabbitMQ blocking publishers (a resource alarm); SQLite's disk nearly full; a NATS
        account at 90% or more of its JetStream storage limit."""
        return self._look(_cluster.alarms(self._ctx))

    async def aalarms(self) -> list[str]:
        """:meth:`alarms` for async code."""
        return await self._alook(_cluster.alarms(self._ctx))

    def stats(self) -> ClusterStats:
        """Per-queue and per-task counts, worker counter totals and rates, and the
        broker's :meth:`alarms`."""
        return self._look(_cluster.stats(self._ctx))

    async def astats(self) -> ClusterStats:
        """:meth:`stats` for async code."""
        return await self._alook(_cluster.stats(self._ctx))

    def audit(self, limit: int = 100) -> list[AuditEntry]:
        """The newest ``limit`` audit entries, newest first."""
        return self._look(_cluster.audit(self._ctx, limit))

    async def aaudit(self, limit: int = 100) -> list[AuditEntry]:
        """:meth:`audit` for async code."""
        return await self._alook(_cluster.audit(self._ctx, limit))

    def reveal(self, task_id: str) -> dict[str, Any]:
        """The arguments of dead-lettered ``task_id`` (``id``, ``task``, ``args``,
        ``kwargs``), written to the audit trail as ``reveal``. Nothing else in this API
        shows a payload; raises NotFound when the task is not a dead letter."""
        return self._look(_queues.reveal(self._ctx, task_id))

    async def areveal(self, task_id: str) -> dict[str, Any]:
        """:meth:`reveal` for async code."""
        return await self._alook(_queues.reveal(self._ctx, task_id))

    def record(
        self,
        action: str,
        target: str,
        *,
        ids: Sequence[str] = (),
        details: dict[str, Any] | None = None,
    ) -> None:
        """Write an audit entry for an action done through another API (for example a
        schedule changed by a front end), as this admin's actor. ``AuditNotWritten`` if
        the result store refuses it (the entry is logged instead)."""
        self._run(self._ctx.record(action, target, list(ids), details=details, on_queue=False))

    async def arecord(
        self,
        action: str,
        target: str,
        *,
        ids: Sequence[str] = (),
        details: dict[str, Any] | None = None,
    ) -> None:
        """:meth:`record` for async code."""
        await self._arun(
            self._ctx.record(action, target, list(ids), details=details, on_queue=False)
        )

    # -- snapshots -------------------------------------------------------------------
    def export(
        self,
        fp: IO[str],
        *,
        queues: Sequence[str] | None = None,
        states: Sequence[str] = ("ready", "scheduled", "dead"),
        redact: bool = False,
    ) -> int:
        """Write a JSON-lines snapshot of waiting and dead tasks to ``fp`` (a text file);
        how many tasks. With ``redact`` the message bodies (arguments) are left out."""
        return self._run(_snapshot.export(self._ctx, fp, queues, states, redact))

    async def aexport(
        self,
        fp: IO[str],
        *,
        queues: Sequence[str] | None = None,
        states: Sequence[str] = ("ready", "scheduled", "dead"),
        redact: bool = False,
    ) -> int:
        """:meth:`export` for async code."""
        return await self._arun(_snapshot.export(self._ctx, fp, queues, states, redact))

    def import_(self, fp: IO[str], *, dry_run: bool = False) -> int:
        """Load a snapshot written by :meth:`export`; how many tasks were imported (ids
        that already exist are skipped). The whole file is checked first: a bad line
        raises ConfigError naming it, and nothing is imported."""
        return self.import_report(fp, dry_run=dry_run).imported

    async def aimport_(self, fp: IO[str], *, dry_run: bool = False) -> int:
        """:meth:`import_` for async code."""
        return (await self.aimport_report(fp, dry_run=dry_run)).imported

    def import_report(self, fp: IO[str], *, dry_run: bool = False) -> ImportReport:
        """:meth:`import_` with the count of skipped ids too."""
        return self._run(_snapshot.import_(self._ctx, fp, dry_run))

    async def aimport_report(self, fp: IO[str], *, dry_run: bool = False) -> ImportReport:
        """:meth:`import_report` for async code."""
        return await self._arun(_snapshot.import_(self._ctx, fp, dry_run))


async def _boxed(coro: Coroutine[Any, Any, T]) -> tuple[T]:
    """``coro``'s value in a tuple, so that a deadline's None is not mistaken for it."""
    return (await coro,)
