"""Putting prepared sends on the broker, and taking work back off it.

A send is planned once (:meth:`Enqueuer.plan`): the enqueue middleware runs, and the plan
notes whether anything in it needs the app's loop. Two runners carry out the same plan:
:meth:`Enqueuer.run` on the loop (idempotency keys, records, publish, ``queued`` hooks --
all or nothing for one call), and :meth:`Enqueuer.run_blocking` for a synchronous caller,
which publishes from the calling thread when the plan allows (no hop onto the loop) and
hands the plan to :meth:`run` otherwise. A send that fails half-way is rolled back by
:meth:`Enqueuer.undo`, one seam that a test can replace to play a producer that dies before
cleaning up. :meth:`Enqueuer.cancel` takes queued or running work back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any, Final

from .. import codec
from .._waiters import within
from ..brokers.base import Message
from ..errors import IdempotencyConflict, TaskflowError
from ..eventbus import HookKind
from ..message import Envelope, TaskStatus
from ..middleware import MiddlewareStack
from ..results.base import is_terminal
from .backends import Backends
from .hooks import Hooks
from .loop import LoopThread
from .prepare import Prepared, message_for, queued_event, queued_record
from .registry import TaskRegistry
from .settings import Settings

__all__ = ["Enqueuer", "Plan", "continuing"]

log = logging.getLogger("taskflow.app")

UNDO_TIMEOUT: Final = 5.0
"""Seconds :meth:`Enqueuer.undo` may take before it gives up and logs what is left."""

continuing: ContextVar[Envelope | None] = ContextVar("taskflow_continuing", default=None)
"""The envelope of the finished task whose continuations are running (the worker sets it
around them): what they send is the next step of that task's work. Read by the
OpenTelemetry instrumentation to keep a canvas in one trace."""

Records = list[tuple[str, dict[str, Any]]]


class Plan:
    """One send as it will go out: the envelopes after the enqueue middleware, and whether
    a blocking caller may publish them from its own thread (``blocking``)."""

    __slots__ = ("blocking", "envelopes", "prepared")

    def __init__(self, prepared: list[Prepared], envelopes: list[Envelope], blocking: bool) -> None:
        self.prepared = prepared
        self.envelopes = envelopes
        self.blocking = blocking


class Enqueuer:
    """Sends prepared tasks to an app's backends; undoes and cancels."""

    def __init__(
        self,
        settings: Settings,
        backends: Backends,
        *,
        loop: LoopThread,
        middleware: MiddlewareStack,
        hooks: Hooks,
        registry: TaskRegistry,
    ) -> None:
        self._settings = settings
        self._backends = backends
        self._broker = backends.broker
        self._results = backends.results
        self._loop = loop
        self._middleware = middleware
        self._hooks = hooks
        self._registry = registry
        # What the backends can do from any thread never changes: decided once.
        self._publish_anywhere = self._broker.capabilities.blocking_publish
        self._record_anywhere = self._results.capabilities.blocking_create
        self._fork_safe = (
            self._broker.capabilities.fork_safe and self._results.capabilities.fork_safe
        )

    # -- the plan ------------------------------------------------------------------------
    def plan(self, prepared: list[Prepared]) -> Plan:
        """Run the enqueue middleware over ``prepared`` and note how the send may go out."""
        chain = self._middleware.enqueue
        envelopes = [chain(p.envelope) for p in prepared]
        return Plan(prepared, envelopes, self._blocking(prepared, envelopes))

    def _blocking(self, prepared: list[Prepared], envelopes: list[Envelope]) -> bool:
        """True when nothing in the send needs the loop: a connected broker that publishes
        from any thread, no idempotency keys or caller-chosen ids (those read the store
        first), no ``queued`` hooks, and records (if any) the store creates from any thread."""
        if not (self._publish_anywhere and self._backends.connected):
            return False
        if self._hooks.wants(HookKind.QUEUED) or self._loop.in_loop_thread():
            return False
        records = False
        for p, e in zip(prepared, envelopes, strict=True):
            if e.idempotency_key is not None or p.explicit_id:
                return False
            records = records or p.store_result
        return self._record_anywhere or not records

    def max_deliveries(self, name: str) -> int:
        """How many deliveries of one attempt of task ``name`` the broker makes.

        A delivery lost with its worker does not spend a retry: the broker delivers the same
        attempt again, up to the app's ``max_deliveries``. A task declared
        ``on_lost="fail"`` gets one delivery (it is dead-lettered ``worker_lost`` at the
        first loss).
        """
        task = self._registry.get(name)
        if task is not None and task.options.on_lost == "fail":
            return 1
        return self._settings.max_deliveries

    def message(self, env: Envelope) -> Message:
        """The broker message for ``env``."""
        return message_for(env, self.max_deliveries(env.task))

    # -- the runners ---------------------------------------------------------------------
    async def enqueue(self, prepared: list[Prepared]) -> list[str]:
        """Plan and :meth:`run` a send (on the loop); the ids, in order."""
        return await self.run(self.plan(prepared))

    def enqueue_blocking(self, prepared: list[Prepared]) -> list[str]:
        """Plan and :meth:`run_blocking` a send (not on the loop); the ids, in order."""
        return self.run_blocking(self.plan(prepared))

    async def run(self, plan: Plan) -> list[str]:
        """Record, publish and announce; all or nothing for one call."""
        await self._backends.connect()
        prepared, envs = plan.prepared, plan.envelopes
        for env in envs:
            await self._backends.declare(env.queue)
        ids, fresh = await self._resolve_idempotency(prepared, envs)
        if not fresh:
            return ids
        records = [(envs[i].id, queued_record(envs[i])) for i in fresh if prepared[i].store_result]
        messages = [self.message(envs[i]) for i in fresh]
        fresh_envs = [envs[i] for i in fresh]
        if (
            records
            and self._results.capabilities.atomic_create
            and not any(prepared[i].explicit_id for i in fresh)
        ):
            # Generated ids are new, and a create never overwrites a worker's update:
            # write the queued records and publish in parallel (one round trip of latency).
            await self._record_and_publish(fresh_envs, records, messages)
        else:
            if records:
                await self._create_records(fresh_envs, records)
            try:
                await self._broker.publish(messages)
            except BaseException:
                await self.undo(fresh_envs, records)
                raise
        if self._hooks.wants(HookKind.QUEUED):
            for i in fresh:
                await self._hooks.run(HookKind.QUEUED, queued_event(envs[i]))
        return ids

    def run_blocking(self, plan: Plan) -> list[str]:
        """:meth:`run` for a synchronous caller: in the calling thread, without a hop onto
        the loop, when the plan allows; on the loop otherwise."""
        if not self._fork_safe:
            self._loop.check_fork()  # the blocking path would use the parent's connections
        if not plan.blocking:
            return self._loop.call(self.run(plan))
        envs = plan.envelopes
        declared = self._backends.declared
        records: Records = []
        messages: list[Message] = []
        ids: list[str] = []
        # A loop, not comprehensions: most sends are one task (``delay()``).
        for env, p in zip(envs, plan.prepared, strict=True):
            if env.queue not in declared:
                self._loop.call(self._backends.declare(env.queue))
            if p.store_result:
                records.append((env.id, queued_record(env)))
            messages.append(self.message(env))
            ids.append(env.id)
        self._record_and_publish_blocking(envs, records, messages)
        return ids

    def _record_and_publish_blocking(
        self, envs: list[Envelope], records: Records, messages: list[Message]
    ) -> None:
        """Write the queued records and publish, from the calling thread: all or nothing
        as in :meth:`run` (a failed publish undoes the records; records not written
        after the publish are logged, and the worker's own updates create them)."""
        finish: Callable[[], list[bool]] | None = None
        # A broker linked to the store creates the records with the messages: one call.
        linked = bool(records) and self._backends.records_linked
        if records and not linked:
            if self._results.capabilities.atomic_create:
                # As in run(): the queued records go out, then the messages, before the
                # records' answer is read (one round trip of latency for the two).
                finish = self._results.begin_create_many_blocking(records, None)
            else:
                self._results.create_many_blocking(records, None)
        try:
            if linked:
                self._broker.publish_recording_blocking(messages, records)
            else:
                self._broker.publish_blocking(messages)
        except BaseException:
            if finish is not None:
                with contextlib.suppress(Exception):
                    finish()
            # A linked send wrote its records in the messages' transaction, which failed
            # whole: only idempotency keys (written before) are left to undo.
            self._loop.call(self.undo(envs, [] if linked else records))
            raise
        if finish is not None:
            try:
                finish()
            except Exception as exc:
                _records_not_written(exc)

    async def undo(self, envs: list[Envelope], records: Records) -> None:
        """Forget the records and idempotency keys of a send that did not go out, within
        ``UNDO_TIMEOUT`` seconds (the failure being undone is often a server that stopped
        answering): what is left then is logged, and the send's own error is raised."""
        try:
            await within(self._forget(envs, records), UNDO_TIMEOUT)
        except Exception as exc:
            keys = [env.idempotency_key for env in envs if env.idempotency_key is not None]
            log.warning(
                "could not undo a failed send (%s): the queued record(s) of %s%s stay",
                type(exc).__name__,
                ", ".join(tid for tid, _ in records[:5]) or "no task",
                f" and the idempotency key(s) {', '.join(keys[:5])}" if keys else "",
            )

    async def _forget(self, envs: list[Envelope], records: Records) -> None:
        for tid, _ in records:
            await self._results.delete(tid)
        for env in envs:
            if env.idempotency_key is not None:
                await self._results.delete_value(f"idem:{env.idempotency_key}")

    # -- the steps of run() ------------------------------------------------------------------
    async def _resolve_idempotency(
        self, prepared: list[Prepared], envs: list[Envelope]
    ) -> tuple[list[str], list[int]]:
        ids = [env.id for env in envs]
        fresh: list[int] = []
        for i, (p, env) in enumerate(zip(prepared, envs, strict=True)):
            if env.idempotency_key is None:
                fresh.append(i)
                continue
            key = f"idem:{env.idempotency_key}"
            value = codec.dumps({"id": env.id, "digest": p.digest}).decode()
            existing = await self._results.set_nx(key, value, self._settings.result_ttl)
            if existing is None:
                fresh.append(i)
                continue
            known = codec.loads(existing)
            if known.get("digest") != p.digest:
                raise IdempotencyConflict(
                    f"{env.task}: idempotency key {env.idempotency_key!r} was used for "
                    f"task {known.get('id')} with different arguments"
                )
            ids[i] = str(known["id"])
        return ids, fresh

    async def _record_and_publish(
        self, envs: list[Envelope], records: Records, messages: list[Message]
    ) -> None:
        if self._backends.records_linked:
            # The broker creates the linked store's records with the messages: one call.
            try:
                await self._broker.publish_recording(messages, records)
            except BaseException:
                await self.undo(envs, records)
                raise
            return
        created, published = await asyncio.gather(
            self._results.create_many(records, None),
            self._broker.publish(messages),
            return_exceptions=True,
        )
        if isinstance(published, BaseException):
            await self.undo(envs, records)
            raise published
        if isinstance(created, BaseException):
            _records_not_written(created)

    async def _create_records(self, envs: list[Envelope], records: Records) -> None:
        written = await self._results.create_many(records, None)
        taken = [tid for (tid, _), ok in zip(records, written, strict=True) if not ok]
        if taken:
            await self.undo(envs, [r for r, ok in zip(records, written, strict=True) if ok])
            raise TaskflowError(
                f"task id(s) already in use: {', '.join(taken[:5])}; a task id names one task "
                "for good (use idempotency_key to deduplicate sends)"
            )

    # -- taking work back ------------------------------------------------------------------
    async def cancel(self, task_id: str) -> bool:
        """Cancel queued (never runs) or running (stopped) work."""
        await self._backends.connect()
        record = await self._results.get(task_id)
        if is_terminal(record):
            return False
        if record is None:
            # Never write a "cancelled" record for an id nobody enqueued; workers still hear
            # about it (a running fire-and-forget task has no record).
            await self._broker.send_control({"cmd": "cancel", "id": task_id})
            return False
        now = self._settings.clock.time()
        changed = await self._results.update(
            task_id,
            {"status": TaskStatus.CANCELLED.value, "finished_at": now},
            self._settings.result_ttl,
        )
        removed = False
        if not record.get("canvas"):
            # A canvas step stays queued: the worker that takes it sees the cancelled
            # record, skips it and advances its canvas (which would otherwise wait forever).
            removed = await self._broker.cancel(task_id, str(record.get("queue", "")))
        await self._broker.send_control({"cmd": "cancel", "id": task_id})
        return changed is not None or removed


def _records_not_written(exc: BaseException) -> None:
    # The messages are out; the worker's own updates will create the records.
    log.warning("queued records not written (%s); the tasks were published", exc)
