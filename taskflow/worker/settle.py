"""Settling outcomes: record first, then ack (ack after the outcome is durable), then
hooks, subscribers and one log line.

Every write is retried while the backend is down (:func:`.resilience.persist`): a task that
ran is never acked without its record and never dropped because the store was away for a
while. If the worker stops meanwhile, the message is left to redelivery.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from .. import codec
from .._waiters import within
from ..errors import PayloadError, WorkerLost
from ..message import Envelope, TaskStatus
from ..middleware import TaskEvent
from ..sending import max_deliveries_for
from .publish import EventPublisher
from .resilience import describe, persist
from .scheduler import Job

if TYPE_CHECKING:
    from .worker import Worker

__all__ = ["Settler", "error_info"]

log = logging.getLogger("taskflow.worker")

T = TypeVar("T")

# Best-effort writes while handing a message back (stopping) are bounded by this.
_HAND_BACK_TIMEOUT = 1.0

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

    async def _durably(self, step: Callable[[], Awaitable[T]], what: str, task_id: str) -> T:
        """``step()``, retried while the backend is down."""
        return await persist(step, f"worker {self.w.name}: {what} of task {task_id}", self.w.rng)

    async def _record(self, job: Job, changes: dict[str, Any], terminal: bool) -> bool:
        """Write the record (if the task stores results); False if it was terminal."""
        if not self._stores(job):
            return True
        ttl = self.app.result_ttl if terminal else None
        tid = job.envelope.id
        record = await self._durably(
            lambda: self.app.results.update(tid, changes, ttl), "writing the record", tid
        )
        return record is not None

    async def _settle(self, job: Job, step: Callable[[], Awaitable[bool]], what: str) -> None:
        """Ack / dead-letter / retry the message (retried while the broker is down)."""
        await self._durably(step, what, job.envelope.id)

    async def _announce(
        self,
        job: Job,
        status: TaskStatus,
        *,
        result: Any = None,
        encoded: Any = None,
        error: dict[str, str] | None = None,
        duration: float | None = None,
        retry_in: float | None = None,
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
            # "after" is how long the attempt ran; a retry's delay is said separately.
            took = "" if duration is None else f" after {duration * 1000:.1f}ms"
            why = f": {error['type']}: {error['message'][:200]}" if error else ""
            if retry_in is None:
                log.info(
                    "%s[%s] %s%s (attempt %d)%s",
                    env.task,
                    env.id,
                    status.value,
                    took,
                    job.attempt,
                    why,
                )
            else:
                log.info(
                    "%s[%s] failed%s (attempt %d)%s; retry %d/%d in %.2fs",
                    env.task,
                    env.id,
                    took,
                    job.attempt,
                    why,
                    job.attempt,
                    env.max_retries,
                    retry_in,
                )

    # -- transitions -----------------------------------------------------------------
    async def started(self, job: Job) -> bool:
        """Mark running; False (and the message settled) if the record is terminal."""
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
            await self._already_final(job)
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

    async def _already_final(self, job: Job) -> None:
        """The record is terminal: cancelled meanwhile, or a redelivery of a task whose
        outcome was written before its worker died (before the ack)."""
        tid = job.envelope.id
        record = await self._durably(lambda: self.app.results.get(tid), "reading the record", tid)
        status = TaskStatus((record or {}).get("status", TaskStatus.CANCELLED.value))
        # "cancelled" tells the canvas to take the outcome from the stored record.
        await self._advance_canvas(job, TaskStatus.CANCELLED, None)
        await self._settle(job, job.delivery.ack, "acking")
        if status is TaskStatus.CANCELLED:
            self.w.counts["cancelled"] += 1
            await self._announce(job, TaskStatus.CANCELLED)
        else:
            log.info("%s[%s] already %s; not run again", job.envelope.task, tid, status.value)

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
        await self._settle(job, job.delivery.ack, "acking")
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
        text = f"{error['type']}: {error['message']}"
        await self._settle(job, lambda: job.delivery.dead_letter(reason, text), "dead-lettering")
        self.w.counts["failed"] += 1
        self.w.counts["dead_lettered"] += 1
        await self._announce(job, TaskStatus.FAILED, error=error, duration=duration)

    async def worker_lost(self, job: Job) -> None:
        """A task declared ``on_lost="fail"`` came back after its worker was lost."""
        env = job.envelope
        exc = WorkerLost(
            f"the worker running task {env.task}[{env.id}] was lost, and the task is "
            "declared on_lost='fail'"
        )
        await self.failed(job, exc, 0.0, reason="worker_lost")

    async def retry(self, job: Job, exc: BaseException, delay: float, duration: float) -> None:
        """Publish the next attempt (held by the broker for ``delay``) in place of this one."""
        env = job.envelope
        delay = max(0.0, float(delay))
        error = error_info(exc)
        nxt: Envelope = env.replace(
            attempt=job.attempt + 1, eta=self.w.clock.time() + delay if delay > 0 else None
        )
        try:
            body = codec.encode_envelope(nxt)
        except Exception as enc:  # e.g. headers that do not survive re-encoding
            log.warning(
                "%s[%s]: the next attempt cannot be encoded (%s); failing instead of retrying",
                env.task,
                env.id,
                describe(enc),
            )
            await self.failed(job, exc, duration)
            return
        status = TaskStatus.RETRYING
        ok = await self._record(
            job,
            {"status": status.value, "error": error, "attempts": job.attempt, "eta": nxt.eta},
            terminal=False,
        )
        if not ok:  # cancelled while it ran: do not come back
            await self._advance_canvas(job, TaskStatus.CANCELLED, None)
            await self._settle(job, job.delivery.ack, "acking")
            return
        # The next attempt gets a fresh budget of deliveries: lost ones never spend retries.
        budget = max_deliveries_for(self.app, env.task)
        await self._settle(
            job,
            lambda: job.delivery.retry(body, delay, max_deliveries=budget),
            "publishing the retry",
        )
        self.w.counts["retried"] += 1
        await self._announce(job, status, error=error, duration=duration, retry_in=delay)

    async def cancelled(self, job: Job, *, started: bool) -> None:
        """Settle a cancelled task: record (if not already), ack, announce."""
        await self._record(
            job,
            {"status": TaskStatus.CANCELLED.value, "finished_at": self.w.clock.time()},
            terminal=True,
        )
        await self._advance_canvas(job, TaskStatus.CANCELLED, None)
        await self._settle(job, job.delivery.ack, "acking")
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
        await self._settle(job, job.delivery.ack, "acking")
        self.w.counts["expired"] += 1
        await self._announce(job, TaskStatus.EXPIRED)

    async def requeue(self, job: Job, started: bool = False) -> None:
        """Hand a message back uncounted (stopping); its record goes back to queued.

        Best effort and bounded: if it fails, the lease runs out and the broker delivers
        the message again.
        """
        try:
            if started and self._stores(job):
                await within(
                    self.app.results.update(
                        job.envelope.id, {"status": TaskStatus.QUEUED.value}, None
                    ),
                    _HAND_BACK_TIMEOUT,
                )
            await within(job.delivery.nack(requeue=True), _HAND_BACK_TIMEOUT)
            self.w.counts["requeued"] += 1
        except Exception as exc:  # the lease will expire and the broker redelivers
            log.warning(
                "could not hand back %s (%s); it returns after its lease",
                job.envelope.id,
                describe(exc),
            )

    def abandon(self, job: Job, exc: Exception) -> None:
        """Settling ``job`` kept failing with an error that is not an outage: leave its
        message to the broker, which delivers it again after the lease (a redelivery of a
        task whose outcome is recorded only finishes the settling), up to the app's
        ``max_deliveries``; then it is dead-lettered and its record failed."""
        log.error(
            "%s[%s]: internal error settling the task (%s); it is delivered again after its lease",
            job.envelope.task,
            job.envelope.id,
            describe(exc),
        )

    async def _advance_canvas(self, job: Job, status: TaskStatus, encoded: Any) -> None:
        env = job.envelope
        if not env.canvas:
            return
        calls = 0

        async def advance() -> None:
            nonlocal calls
            calls += 1
            if calls > 1 and self._stores(job):
                # Again after a failure part-way: advance as a redelivery does ("cancelled",
                # so the canvas re-reads the stored outcome and re-sends what the failed
                # call may have claimed without sending).
                await self.app._advance_canvas(env, TaskStatus.CANCELLED, None)
            else:
                await self.app._advance_canvas(env, status, encoded)

        await self._durably(advance, "advancing the canvas", env.id)


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
