"""Settling outcomes: every way a message is settled is a row of one table, carried out
by one path.

:meth:`Settler.apply` takes the same steps for each :class:`Transition`, in this order:

1. write the task's record (act after the outcome is durable; where the broker writes the
   store's records and no continuations run, the outcome goes with the act in one call:
   ``Delivery.ack_recording``, ``dead_letter_recording``, ``retry_recording``);
2. run the kernel's continuations for a terminal outcome (canvas advancement, which ``App``
   registers; the worker does not know what they are);
3. act on the message: ack, dead-letter or publish the retry;
4. count it in the worker's :class:`~.stats.WorkerStats`;
5. announce it (:class:`~.announce.Announcer`: hooks, subscribers, listeners, one log line).

Every write is retried while the backend is down (:func:`.resilience.persist`): a task that
ran is never acked without its record and never dropped because the store was away for a
while. If the worker stops meanwhile, the message is left to redelivery.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from .. import codec
from .._waiters import within
from ..brokers.base import Delivery
from ..clock import Clock
from ..errors import PayloadError, RecordTooLarge, WorkerLost
from ..kernel import Kernel
from ..kernel.enqueue import continuing
from ..message import Envelope, TaskStatus, error_info
from .announce import Announcer, Subject
from .leases import LeaseKeeper
from .policy import Fail, RetryIn
from .resilience import NOT_RETRIED, describe, persist
from .scheduler import Job
from .stats import WorkerStats

__all__ = [
    "CANCELLED",
    "EXPIRED",
    "FAILED",
    "FAILED_BEFORE",
    "LOST",
    "NOT_REGISTERED",
    "RETRIED",
    "SETTLED_BEFORE",
    "SUCCEEDED",
    "Act",
    "Settler",
    "Transition",
]

log = logging.getLogger("taskflow.worker")

T = TypeVar("T")

# The statuses a task's record takes on the way every task goes, as the plain strings a
# record holds (``TaskStatus.X.value`` is a property call).
_RUNNING = TaskStatus.RUNNING.value
_SUCCEEDED = TaskStatus.SUCCEEDED.value

# Best-effort writes while handing a message back (stopping) are bounded by this.
_HAND_BACK_TIMEOUT = 1.0
# A running record the broker marked gets its other fields with the outcome when the
# body returns within this many seconds, else on their own (Settler._complete_running).
_COMPLETE_AFTER = 0.05


class Act(enum.StrEnum):
    """What is done to the message (the value names it in the log of an outage; a
    string, so that it is that name)."""

    ACK = "acking"
    DEAD_LETTER = "dead-lettering"
    RETRY = "publishing the retry"
    NONE = "nothing"


_WITH_RECORD = {act: f"writing the record and {act}" for act in Act}
"""What an act done in one call with writing the record is called in an outage's log
line (made once: the combined call is every stored task's last step)."""


@dataclass(frozen=True, slots=True)
class Transition:
    """One way a message is settled."""

    status: TaskStatus
    """The record's new status; the event's; what the continuations are told."""
    act: Act
    announced: bool = True
    """Counted and announced (False: the outcome was settled and announced before)."""
    level: int = logging.INFO
    """The level of its log line."""


# The table. A transition that is not terminal (a retry) is applied only while the record
# is not terminal yet: see Settler.apply.
SUCCEEDED = Transition(TaskStatus.SUCCEEDED, Act.ACK)
FAILED = Transition(TaskStatus.FAILED, Act.DEAD_LETTER)
RETRIED = Transition(TaskStatus.RETRYING, Act.RETRY)
CANCELLED = Transition(TaskStatus.CANCELLED, Act.ACK)
EXPIRED = Transition(TaskStatus.EXPIRED, Act.ACK)
NOT_REGISTERED = Transition(TaskStatus.FAILED, Act.DEAD_LETTER, level=logging.ERROR)
"""A task name this worker does not know."""
LOST = Transition(TaskStatus.FAILED, Act.NONE, level=logging.ERROR)
"""Its workers kept dying: the broker dead-lettered it already."""
SETTLED_BEFORE = Transition(TaskStatus.CANCELLED, Act.ACK, announced=False)
"""The record was terminal already (a redelivery after the outcome was written, or a retry
of a task cancelled while it ran): ack it; "cancelled" tells the continuations to take the
outcome from the stored record."""
FAILED_BEFORE = Transition(TaskStatus.CANCELLED, Act.DEAD_LETTER, announced=False)
"""The record says failed but the message is delivered again: its worker died between
writing the failure and dead-lettering the message. It is dead-lettered now, so that an
operator can see and replay it; "cancelled", as for :data:`SETTLED_BEFORE`."""


Recorded = Callable[[dict[str, Any], float | None], Awaitable[tuple[bool, bool]]]
"""An act on a message with the task's record written in the same call (a linked
delivery's ``ack_recording``, ``dead_letter_recording`` or ``retry_recording``): called
with the record's changes and time to live; returns whether the record was written and
whether the act held."""


def recording(
    job: Job, act: Callable[[Delivery, str, dict[str, Any], float | None], Awaitable[Any]]
) -> Recorded | None:
    """``act`` (called with the delivery, the task id, the record's changes and time to
    live) as the :data:`Recorded` act of ``job``'s message, where the task stores its
    outcome and its delivery writes the linked store's records; else None, without making
    a closure (every task off Redis, and every one that does not store its result)."""
    delivery = job.delivery
    if not (job.stores and delivery.records_linked):
        return None
    tid = job.envelope.id
    return lambda changes, ttl: act(delivery, tid, changes, ttl)


def _ack_with(
    delivery: Delivery, tid: str, changes: dict[str, Any], ttl: float | None
) -> Awaitable[tuple[bool, bool]]:
    return delivery.ack_recording(tid, changes, ttl)


def _error_text(error: dict[str, Any]) -> str:
    """A dead letter's error text from a record's ``error`` (``error_info``)."""
    return f"{error.get('type', 'Exception')}: {error.get('message', '')}"


class Settler:
    """Writes outcomes for one worker."""

    def __init__(
        self,
        kernel: Kernel,
        stats: WorkerStats,
        announcer: Announcer,
        *,
        name: str,
        clock: Clock,
        rng: random.Random,
        leases: LeaseKeeper,
    ) -> None:
        self.kernel = kernel
        self.stats = stats
        self.announcer = announcer
        self._leases = leases
        """Told of each job's delivery settled here, before its hooks run (a settled
        message's lease is not renewed while a slow hook runs; the window's release then
        leaves it be); asked, before a body starts, whether its lease still holds."""
        self.name = name
        self.clock = clock
        self.rng = rng
        self._completing: set[asyncio.Task[Any]] = set()
        self._unwritten: dict[str, tuple[asyncio.TimerHandle, dict[str, Any]]] = {}

    # -- the one path ----------------------------------------------------------------
    async def apply(
        self,
        subject: Subject,
        transition: Transition,
        changes: dict[str, Any] | None,
        act: Callable[[], Awaitable[bool]] | None,
        *,
        encoded: Any = None,
        result: Any = None,
        error: dict[str, str] | None = None,
        duration: float | None = None,
        retry_in: float | None = None,
        recorded: Recorded | None = None,
    ) -> bool:
        """Record ``changes`` (None: nothing to write), run the continuations, ``act()`` on
        the message, count, announce. ``recorded``: ``act`` with the record written in
        the same call (:func:`recording`, None where the task does not store its outcome),
        used where nothing runs between the two.

        False, with nothing else done, if ``transition`` is not terminal and the record
        was terminal already (the caller settles it as :data:`SETTLED_BEFORE`).
        """
        status = transition.status
        env = subject.envelope
        if recorded is not None and changes is not None and not env.canvas:
            # Nothing runs between the record and the act (no continuations): one call.
            written = await self._record_and_act(env.id, recorded, changes, transition)
            if not written and not status.terminal:
                return False
            self._lease_done(subject)
            if not written and status is TaskStatus.SUCCEEDED:
                self.result_dropped(env, "record_final")
            changes = act = None
        if changes is not None:
            written = await self._record(subject, changes, status.terminal)
            if not written and not status.terminal:
                return False
            if not written and status is TaskStatus.SUCCEEDED:
                self.result_dropped(env, "record_final")
        if env.canvas and status.terminal:
            await self._continue(subject, status, encoded)
        if act is not None:
            await self.durably(act, transition.act, env.id)
            self._lease_done(subject)
        if transition.announced:
            self.stats.count(status, transition.act is Act.DEAD_LETTER)
            await self.announcer.announce(
                subject,
                status,
                result=result,
                encoded=encoded,
                error=error,
                duration=duration,
                retry_in=retry_in,
                level=transition.level,
            )
        return True

    def _lease_done(self, subject: Subject) -> None:
        """``subject``'s message was settled: its lease needs no more renewal, and a stop
        need not wait for the rest (its hooks)."""
        if isinstance(subject, Job):
            subject.settled = True
            self._leases.drop(subject.delivery)

    def result_dropped(self, env: Envelope, reason: str) -> None:
        """A task that stores its result returned one that is not stored: ``reason`` is
        ``"unencodable"`` (the value did not encode: the task fails instead),
        ``"too_large"`` (the result store cannot hold it: the task fails instead) or
        ``"record_final"`` (its record was final already, e.g. cancelled between the body's
        return and this write).

        The seam the OpenTelemetry instrumentation counts
        (``taskflow_results_dropped_total``).
        """
        log.info("%s[%s]: result not stored (%s)", env.task, env.id, reason)

    async def durably(self, step: Callable[[], Awaitable[T]], what: str, task_id: str) -> T:
        """``step()``, retried while the backend is down (:func:`persist`, entered only
        after a first try failed: a task makes two or three such steps)."""
        try:
            return await step()
        except NOT_RETRIED:
            raise
        except Exception as exc:
            failed = exc
        what = f"worker {self.name}: {what} of task {task_id}"
        return await persist(step, what, self.rng, failed=failed)

    async def _record(
        self,
        subject: Subject,
        changes: dict[str, Any],
        terminal: bool,
        delivery: Delivery | None = None,
    ) -> bool:
        """Write the record (if the task stores results); False if it was terminal. With
        ``delivery`` linked to the store (``Delivery.records_linked``), the write shares
        a call with the settles made with it."""
        if not subject.stores:
            return True
        ttl = self.kernel.settings.result_ttl if terminal else None
        tid = subject.envelope.id
        if self._unwritten:
            changes = self._with_unwritten(tid, changes)
        if delivery is not None and delivery.records_linked:
            linked = delivery.write_record
            return await self.durably(lambda: linked(tid, changes, ttl), "writing the record", tid)
        update = self.kernel.results.update
        record = await self.durably(lambda: update(tid, changes, ttl), "writing the record", tid)
        return record is not None

    async def _record_and_act(
        self, tid: str, recorded: Recorded, changes: dict[str, Any], transition: Transition
    ) -> bool:
        """Write an outcome and act on its message in one call; False if the record was
        terminal already (the act then follows ``recorded``'s rule)."""
        if self._unwritten:
            changes = self._with_unwritten(tid, changes)
        ttl = self.kernel.settings.result_ttl if transition.status.terminal else None
        what = _WITH_RECORD[transition.act]
        written, _ = await self.durably(lambda: recorded(changes, ttl), what, tid)
        return written

    async def _continue(self, subject: Subject, status: TaskStatus, encoded: Any) -> None:
        env = subject.envelope
        calls = 0

        async def proceed() -> None:
            nonlocal calls
            calls += 1
            if calls > 1 and subject.stores:
                # Again after a failure part-way: continue as a redelivery does ("cancelled",
                # so a canvas re-reads the stored outcome and re-sends what the failed call
                # may have claimed without sending).
                await self.kernel.run_continuations(env, TaskStatus.CANCELLED, None)
            else:
                await self.kernel.run_continuations(env, status, encoded)

        token = continuing.set(env)
        try:
            await self.durably(proceed, "running the continuations", env.id)
        finally:
            continuing.reset(token)

    # -- a job's life ----------------------------------------------------------------
    async def started(self, job: Job) -> bool:
        """Mark running; False if the body is not to run: the record is terminal (the
        message is settled), or the lease ran out before the body could start (the broker
        has delivered it again, or will: see :meth:`_leased`).

        A record the broker marked running as it leased the message (and found not
        terminal) is not written again before the body: the rest of its fields follow
        in the background (:meth:`_complete_running`)."""
        delivery = job.delivery
        recorded = delivery.running_recorded  # by the broker, as it leased the message
        if job.stores and not recorded:
            changes = {
                "status": _RUNNING,
                "started_at": self.clock.time(),
                **self._running_fields(job),
            }
            if not await self._record(job, changes, terminal=False, delivery=delivery):
                await self._settled_before(job)
                return False
        # After the write, which may have waited out an outage longer than the lease (and
        # on the delivery the job holds now: a redelivery to this worker meanwhile).
        if not self._leases.assured(job.delivery) and not await self._leased(job):
            return False
        if job.stores and recorded:  # its other fields follow
            self._complete_running(job)
        await self.announcer.started(job)
        return True

    def _running_fields(self, job: Job) -> dict[str, Any]:
        """A ``running`` record's fields besides its status and ``started_at``."""
        env = job.envelope
        return {
            "attempts": job.attempt,
            "worker": self.name,
            "name": env.task,
            "queue": env.queue,
            "priority": env.priority,
        }

    async def _leased(self, job: Job) -> bool:
        """Renew the lease of ``job``'s message, not known to hold any more (its renewals
        failed: a broker that refused writes, e.g. a Redis server at its ``maxmemory``, or
        was away); False if it was lost meanwhile. The broker then delivers the message
        again, and may have already: the body is not run here, so that it runs once."""
        delivery = job.delivery
        env = job.envelope
        since = asyncio.get_running_loop().time()
        held = await self.durably(delivery.touch, "renewing the lease", env.id)
        self._leases.renewed(delivery, since, held)
        if not held and job.delivery is not delivery:
            # Delivered again to this worker meanwhile: the job took the new delivery.
            return self._leases.assured(job.delivery) or await self._leased(job)
        if not held:
            job.given_up = True
            log.warning(
                "%s[%s]: the lease of its message ran out before the task started (delivery "
                "%d); not run here, the broker delivers it again",
                env.task,
                env.id,
                max(1, delivery.delivery_count),
            )
        return held

    def _complete_running(self, job: Job) -> None:
        """The fields of a ``running`` record the broker did not write (it wrote the status
        and ``started_at``): written with the outcome if the body returns within
        :data:`_COMPLETE_AFTER`, else on their own then (best effort: never the status,
        so a late write cannot undo an outcome). The body does not wait for them."""
        tid, changes = job.envelope.id, self._running_fields(job)
        handle = asyncio.get_running_loop().call_later(
            _COMPLETE_AFTER, self._send_running, tid, changes
        )
        self._unwritten[tid] = (handle, changes)

    def _send_running(self, task_id: str, changes: dict[str, Any]) -> None:
        self._unwritten.pop(task_id, None)
        task = asyncio.get_running_loop().create_task(
            self.kernel.results.update(task_id, changes, None)
        )
        self._completing.add(task)
        task.add_done_callback(self._completed)

    def _completed(self, task: asyncio.Task[Any]) -> None:
        self._completing.discard(task)
        exc = None if task.cancelled() else task.exception()
        if exc is not None:
            log.debug("running record not completed (%s)", describe(exc))

    def _with_unwritten(self, task_id: str, changes: dict[str, Any]) -> dict[str, Any]:
        """``changes`` after the running record's fields still to write for ``task_id``
        (asked only while some are: ``self._unwritten``)."""
        return {**self._take_unwritten(task_id), **changes}

    def _take_unwritten(self, task_id: str) -> dict[str, Any]:
        """The running record's fields still to write for ``task_id`` (none: empty); they
        are now the caller's to write."""
        pending = self._unwritten.pop(task_id, None)
        if pending is None:
            return {}
        pending[0].cancel()
        return pending[1]

    async def close(self) -> None:
        """The worker stops: drop the record fields not sent yet, and wait (bounded) for
        those in flight."""
        for handle, _ in self._unwritten.values():
            handle.cancel()
        self._unwritten.clear()
        if self._completing:
            await asyncio.wait(set(self._completing), timeout=_HAND_BACK_TIMEOUT)

    async def _settled_before(self, job: Job) -> None:
        """The record is terminal: cancelled meanwhile, or a redelivery of a task whose
        outcome was written before its worker died (before the ack, or before the
        dead-lettering of a failure, which is done now)."""
        tid = job.envelope.id
        record = await self.durably(lambda: self.kernel.results.get(tid), "reading the record", tid)
        status = TaskStatus((record or {}).get("status", TaskStatus.CANCELLED.value))
        if status is TaskStatus.CANCELLED:
            await self.apply(job, CANCELLED, None, job.delivery.ack)
            return
        if status is TaskStatus.FAILED:
            text = _error_text((record or {}).get("error") or {})
            await self.apply(
                job, FAILED_BEFORE, None, lambda: job.delivery.dead_letter("failed", text)
            )
            log.warning(
                "%s[%s] failed before its worker was lost; dead-lettered now",
                job.envelope.task,
                tid,
            )
            return
        await self.apply(job, SETTLED_BEFORE, None, job.delivery.ack)
        log.info("%s[%s] already %s; not run again", job.envelope.task, tid, status.value)

    async def succeeded(self, job: Job, value: Any, duration: float) -> None:
        """Store the result, then ack."""
        try:
            encoded = job.task.schema.encode_result(value)
        except PayloadError as exc:
            if job.stores:
                self.result_dropped(job.envelope, "unencodable")
            await self.failed(job, exc, duration, reason="payload")
            return
        changes = (
            {
                "status": _SUCCEEDED,
                "result": encoded,
                "finished_at": self.clock.time(),
                "attempts": job.attempt,
            }
            if job.stores
            else None  # no record to write
        )
        try:
            await self.apply(
                job,
                SUCCEEDED,
                changes,
                job.delivery.ack,
                encoded=encoded,
                result=value,
                duration=duration,
                recorded=recording(job, _ack_with),
            )
        except RecordTooLarge as exc:  # refused before anything was written or acked
            self.result_dropped(job.envelope, "too_large")
            await self.failed(job, exc, duration, reason="payload")

    async def failure(self, job: Job, verdict: RetryIn | Fail, duration: float) -> None:
        """Carry out the retry policy's verdict on a failed attempt."""
        if isinstance(verdict, RetryIn):
            await self.retry(job, verdict.error, verdict.delay, duration)
        else:
            await self.failed(job, verdict.error, duration, reason=verdict.reason)

    async def failed(
        self, job: Job, exc: BaseException, duration: float, reason: str = "failed"
    ) -> None:
        """Record the failure and dead-letter the message."""
        error = error_info(exc)
        changes = {
            "status": TaskStatus.FAILED.value,
            "error": error,
            "finished_at": self.clock.time(),
            "attempts": job.attempt,
        }
        text = _error_text(error)
        await self.apply(
            job,
            FAILED,
            changes,
            lambda: job.delivery.dead_letter(reason, text),
            error=error,
            duration=duration,
            recorded=recording(
                job, lambda d, tid, c, ttl: d.dead_letter_recording(tid, c, ttl, reason, text)
            ),
        )

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
        nxt: Envelope = env.replace(
            attempt=job.attempt + 1, eta=self.clock.time() + delay if delay > 0 else None
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
        error = error_info(exc)
        changes = {
            "status": TaskStatus.RETRYING.value,
            "error": error,
            "attempts": job.attempt,
            "eta": nxt.eta,
        }
        # The next attempt gets a fresh budget of deliveries: lost ones never spend retries.
        budget = self.kernel.max_deliveries(env.task)
        published = await self.apply(
            job,
            RETRIED,
            changes,
            lambda: job.delivery.retry(body, delay, max_deliveries=budget),
            error=error,
            duration=duration,
            retry_in=delay,
            recorded=recording(
                job,
                lambda d, tid, c, _: d.retry_recording(tid, c, body, delay, max_deliveries=budget),
            ),
        )
        if not published:  # cancelled while it ran: do not come back
            await self.apply(job, SETTLED_BEFORE, None, job.delivery.ack)

    async def cancelled(self, job: Job) -> None:
        """Settle a cancelled task: record (if not already), ack, announce."""
        changes = {"status": TaskStatus.CANCELLED.value, "finished_at": self.clock.time()}
        await self.apply(
            job, CANCELLED, changes, job.delivery.ack, recorded=recording(job, _ack_with)
        )

    async def expired(self, job: Job) -> None:
        """A task not started before ``expires`` never runs."""
        changes = {"status": TaskStatus.EXPIRED.value, "finished_at": self.clock.time()}
        await self.apply(
            job, EXPIRED, changes, job.delivery.ack, recorded=recording(job, _ack_with)
        )

    # -- when settling is not possible -----------------------------------------------
    async def requeue(self, job: Job, started: bool = False) -> None:
        """Hand a message back uncounted (stopping); its record goes back to queued.

        Best effort and bounded: if it fails, the lease runs out and the broker delivers
        the message again.
        """
        self._take_unwritten(job.envelope.id)  # the record goes back to queued
        try:
            if started and job.stores:
                await within(
                    self.kernel.results.update(
                        job.envelope.id, {"status": TaskStatus.QUEUED.value}, None
                    ),
                    _HAND_BACK_TIMEOUT,
                )
            await within(job.delivery.nack(requeue=True), _HAND_BACK_TIMEOUT)
            self.stats.requeued += 1
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
