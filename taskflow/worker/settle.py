"""Settling outcomes: record first, then ack (ack after the outcome is durable), then
hooks, subscribers and one log line."""

from __future__ import annotations

import logging
import traceback
from typing import TYPE_CHECKING, Any

from .. import codec
from ..brokers.base import DeadLetter, Delivery
from ..errors import PayloadError, TaskflowError, WorkerLost
from ..message import Envelope, TaskStatus
from ..middleware import TaskEvent
from .publish import EventPublisher
from .scheduler import Job

if TYPE_CHECKING:
    from .worker import Worker

__all__ = ["Settler", "error_info"]

log = logging.getLogger("taskflow.worker")

_FINAL_HOOK = {
    TaskStatus.SUCCEEDED: "success",
    TaskStatus.FAILED: "failure",
    TaskStatus.CANCELLED: "cancel",
    TaskStatus.EXPIRED: "cancel",
}


def error_info(exc: BaseException) -> dict[str, str]:
    """The error fields stored in a failed record."""
    kind = type(exc)
    name = (
        kind.__qualname__
        if kind.__module__ == "builtins"
        else f"{kind.__module__}.{kind.__qualname__}"
    )
    return {
        "type": name,
        "message": str(exc),
        "traceback": "".join(traceback.format_exception(kind, exc, exc.__traceback__)),
    }


class Settler:
    """Writes outcomes for one worker."""

    def __init__(self, worker: Worker) -> None:
        self.w = worker
        self.app = worker.app
        self.publisher = EventPublisher(worker.app)

    # -- helpers ---------------------------------------------------------------------
    def _stores(self, job: Job) -> bool:
        return job.task.options.store_result

    async def _record(self, job: Job, changes: dict[str, Any], terminal: bool) -> bool:
        """Write the record (if the task stores results); False if it was terminal."""
        if not self._stores(job):
            return True
        ttl = self.app.result_ttl if terminal else None
        return await self.app.results.update(job.envelope.id, changes, ttl) is not None

    async def _announce(
        self,
        job: Job,
        status: TaskStatus,
        *,
        result: Any = None,
        encoded: Any = None,
        error: dict[str, str] | None = None,
        duration: float | None = None,
    ) -> None:
        env = job.envelope
        hook = _FINAL_HOOK.get(status) or "retry"
        wants_hooks = bool(
            self.app.hooks[hook]
            or self.app.hooks["finish"]
            or getattr(job.task.options, f"on_{hook}", None)
        )
        remote = status.terminal and await self.publisher.wanted()
        if wants_hooks or self.w.bus.active or remote:
            event = TaskEvent(
                hook if status.terminal else "retry",
                env.id,
                env.task,
                env.queue,
                status.value,
                job.attempt,
                result,
                error,
                self.w.clock.time(),
                duration,
            )
            if wants_hooks:
                await self.app._run_hooks(hook, event, job.task)
            if status.terminal:
                finish = TaskEvent("finish", *_fields(event))
                if self.app.hooks["finish"]:
                    await self.app._run_hooks("finish", finish, None)
                self.w.bus.publish(finish)
                if remote:
                    self.publisher.publish(finish, encoded)
        if log.isEnabledFor(logging.INFO):
            took = "" if duration is None else f" after {duration * 1000:.1f}ms"
            why = f": {error['type']}: {error['message'][:200]}" if error else ""
            log.info(
                "%s[%s] %s%s (attempt %d)%s", env.task, env.id, status.value, took, job.attempt, why
            )

    # -- transitions -----------------------------------------------------------------
    async def started(self, job: Job) -> bool:
        """Mark running; False (and the message settled) if it was cancelled meanwhile."""
        env = job.envelope
        ok = await self._record(
            job,
            {
                "status": TaskStatus.RUNNING.value,
                "started_at": self.w.clock.time(),
                "attempts": job.attempt,
                "worker": self.w.name,
                "name": env.task,
                "queue": env.queue,
                "priority": env.priority,
            },
            terminal=False,
        )
        if not ok:
            await self._advance_canvas(job, TaskStatus.CANCELLED, None)
            await job.delivery.ack()
            self.w.counts["cancelled"] += 1
            await self._announce(job, TaskStatus.CANCELLED)
            return False
        hooks = self.app.hooks["start"] or job.task.options.on_start
        if hooks:
            await self.app._run_hooks(
                "start",
                TaskEvent(
                    "start",
                    env.id,
                    env.task,
                    env.queue,
                    TaskStatus.RUNNING.value,
                    job.attempt,
                    timestamp=self.w.clock.time(),
                ),
                job.task,
            )
        return True

    async def succeeded(self, job: Job, value: Any, duration: float) -> None:
        """Store the result, then ack."""
        try:
            encoded = job.task.schema.encode_result(value)
        except PayloadError as exc:
            await self.failed(job, exc, duration, reason="payload")
            return
        now = self.w.clock.time()
        await self._record(
            job,
            {
                "status": TaskStatus.SUCCEEDED.value,
                "result": encoded,
                "finished_at": now,
                "attempts": job.attempt,
            },
            terminal=True,
        )
        await self._advance_canvas(job, TaskStatus.SUCCEEDED, encoded)
        await job.delivery.ack()
        self.w.counts["succeeded"] += 1
        await self._announce(
            job, TaskStatus.SUCCEEDED, result=value, encoded=encoded, duration=duration
        )

    async def failed(
        self, job: Job, exc: BaseException, duration: float, reason: str = "failed"
    ) -> None:
        """Record the failure and dead-letter the message."""
        error = error_info(exc)
        await self._record(
            job,
            {
                "status": TaskStatus.FAILED.value,
                "error": error,
                "finished_at": self.w.clock.time(),
                "attempts": job.attempt,
            },
            terminal=True,
        )
        await self._advance_canvas(job, TaskStatus.FAILED, None)
        await job.delivery.dead_letter(reason, f"{error['type']}: {error['message']}")
        self.w.counts["failed"] += 1
        self.w.counts["dead_lettered"] += 1
        await self._announce(job, TaskStatus.FAILED, error=error, duration=duration)

    async def retry(self, job: Job, exc: BaseException, delay: float, duration: float) -> None:
        """Publish the next attempt (held by the broker for ``delay``) in place of this one."""
        env = job.envelope
        delay = max(0.0, float(delay))
        error = error_info(exc)
        nxt: Envelope = env.replace(
            attempt=job.attempt + 1, eta=self.w.clock.time() + delay if delay > 0 else None
        )
        status = TaskStatus.RETRYING
        ok = await self._record(
            job,
            {"status": status.value, "error": error, "attempts": job.attempt, "eta": nxt.eta},
            terminal=False,
        )
        if not ok:  # cancelled while it ran: do not come back
            await self._advance_canvas(job, TaskStatus.CANCELLED, None)
            await job.delivery.ack()
            return
        await job.delivery.retry(
            codec.encode_envelope(nxt),
            delay,
            max_deliveries=max(1, env.max_retries + 1 - job.attempt),
        )
        self.w.counts["retried"] += 1
        await self._announce(job, status, error=error, duration=duration)

    async def cancelled(self, job: Job, *, started: bool) -> None:
        """Settle a cancelled task: record (if not already), ack, announce."""
        await self._record(
            job,
            {"status": TaskStatus.CANCELLED.value, "finished_at": self.w.clock.time()},
            terminal=True,
        )
        await self._advance_canvas(job, TaskStatus.CANCELLED, None)
        await job.delivery.ack()
        self.w.counts["cancelled"] += 1
        await self._announce(job, TaskStatus.CANCELLED)

    async def expired(self, job: Job) -> None:
        """A task not started before ``expires`` never runs."""
        await self._record(
            job,
            {"status": TaskStatus.EXPIRED.value, "finished_at": self.w.clock.time()},
            terminal=True,
        )
        await self._advance_canvas(job, TaskStatus.EXPIRED, None)
        await job.delivery.ack()
        self.w.counts["expired"] += 1
        await self._announce(job, TaskStatus.EXPIRED)

    async def requeue(self, job: Job, started: bool = False) -> None:
        """Hand a message back uncounted (shutdown); its record goes back to queued."""
        try:
            if started:
                await self._record(job, {"status": TaskStatus.QUEUED.value}, terminal=False)
            await job.delivery.nack(requeue=True)
            self.w.counts["requeued"] += 1
        except Exception as exc:  # the lease will expire and the broker redelivers
            log.warning(
                "could not hand back %s (%s); it returns after its lease", job.envelope.id, exc
            )

    async def reject_undecodable(self, delivery: Delivery, exc: Exception) -> None:
        """An envelope that cannot be decoded is dead-lettered; the worker goes on."""
        log.error(
            "message %s on %s is not a valid envelope (%s); dead-lettered",
            delivery.id,
            delivery.queue,
            exc,
        )
        try:
            await self.app.results.update(
                delivery.id,
                {
                    "status": TaskStatus.FAILED.value,
                    "queue": delivery.queue,
                    "error": error_info(exc),
                    "finished_at": self.w.clock.time(),
                },
                self.app.result_ttl,
            )
        except TaskflowError as err:
            log.warning("could not record the failure of %s: %s", delivery.id, err)
        await delivery.dead_letter("undecodable", str(exc))
        self.w.counts["dead_lettered"] += 1

    async def reject_unknown(self, delivery: Delivery, env: Envelope, exc: Exception) -> None:
        """A task name this worker does not know fails with NotRegistered."""
        error = error_info(exc)
        log.error("%s[%s]: %s; dead-lettered", env.task, env.id, exc)
        await self.app.results.update(
            env.id,
            {
                "status": TaskStatus.FAILED.value,
                "name": env.task,
                "queue": env.queue,
                "error": error,
                "finished_at": self.w.clock.time(),
                "attempts": env.attempt,
            },
            self.app.result_ttl,
        )
        if env.canvas:
            await self.app._advance_canvas(env, TaskStatus.FAILED, None)
        await delivery.dead_letter("not_registered", f"{error['type']}: {error['message']}")
        self.w.counts["failed"] += 1
        self.w.counts["dead_lettered"] += 1
        if self.w.bus.active:
            self.w.bus.publish(
                TaskEvent(
                    "finish",
                    env.id,
                    env.task,
                    env.queue,
                    TaskStatus.FAILED.value,
                    env.attempt,
                    None,
                    error,
                    self.w.clock.time(),
                )
            )

    async def lost(self, dead: DeadLetter) -> None:
        """A message the broker dead-lettered because its workers kept dying (its
        deliveries ran out): record the failure so nobody waits for it forever."""
        try:
            env: Envelope | None = codec.decode_envelope(dead.body)
        except PayloadError:
            env = None
        exc = WorkerLost(
            f"the worker running task {dead.id} was lost on each of its "
            f"{dead.delivery_count or 'allowed'} deliveries"
        )
        error = error_info(exc)
        changes: dict[str, Any] = {
            "status": TaskStatus.FAILED.value,
            "error": error,
            "finished_at": self.w.clock.time(),
        }
        if dead.delivery_count:
            changes["attempts"] = dead.delivery_count
        await self.app.results.update(dead.id, changes, self.app.result_ttl)
        log.error("%s[%s] failed: worker lost; dead-lettered", env.task if env else "?", dead.id)
        self.w.counts["failed"] += 1
        if env is None:
            return
        event = TaskEvent(
            "failure",
            env.id,
            env.task,
            env.queue,
            TaskStatus.FAILED.value,
            dead.delivery_count or env.attempt,
            None,
            error,
            self.w.clock.time(),
        )
        await self.app._run_hooks("failure", event, self.app.registry.get(env.task))
        finish = TaskEvent("finish", *_fields(event))
        await self.app._run_hooks("finish", finish, None)
        self.w.bus.publish(finish)
        if env.canvas:
            await self.app._advance_canvas(env, TaskStatus.FAILED, None)

    async def _advance_canvas(self, job: Job, status: TaskStatus, encoded: Any) -> None:
        if job.envelope.canvas:
            await self.app._advance_canvas(job.envelope, status, encoded)


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
    )
