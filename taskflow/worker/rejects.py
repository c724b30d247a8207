"""Settling messages that will never run: undecodable, poisoned, an unknown task, and those
the broker dead-lettered because their workers kept dying (``worker_lost``).

Each one finishes the task's record where an id is known, so nobody waits for it forever,
and logs one line without any part of the message body. A message that names a task (an
unknown one, a lost one) is settled through :meth:`.settle.Settler.apply` like any other
outcome, so its continuations run and its event is announced; one that cannot be read as
a task (undecodable, poisoned) has no event to announce.
"""

from __future__ import annotations

import logging
import random
from typing import Any

from .. import codec
from .._masking import shown
from .._waiters import within
from ..brokers.base import DeadLetter, Delivery
from ..clock import Clock
from ..codec import EnvelopeError
from ..errors import PayloadError, WorkerLost
from ..kernel import Kernel, TaskDef
from ..message import Envelope, TaskStatus, error_info
from .resilience import describe, persist
from .settle import LOST, NOT_REGISTERED, Settler
from .stats import WorkerStats

__all__ = ["Rejects", "Stray"]

log = logging.getLogger("taskflow.worker")

_BEST_EFFORT = 1.0  # seconds for a record write that may not even have a real id


class Stray:
    """A message that never ran, as the subject of a transition: its record is always
    written, whatever its task declares (the task may be unknown here)."""

    __slots__ = ("attempt", "envelope", "task")

    def __init__(self, envelope: Envelope, task: TaskDef | None = None) -> None:
        self.envelope = envelope
        self.attempt = envelope.attempt
        self.task = task

    @property
    def stores(self) -> bool:
        """Always: nobody may wait for it forever."""
        return True


class Rejects:
    """Settles the messages one worker will never run."""

    def __init__(
        self,
        kernel: Kernel,
        settler: Settler,
        stats: WorkerStats,
        *,
        name: str,
        clock: Clock,
        rng: random.Random,
    ) -> None:
        self.kernel = kernel
        self.settler = settler
        self.stats = stats
        self.name = name
        self.clock = clock
        self.rng = rng

    async def undecodable(self, delivery: Delivery, exc: Exception) -> None:
        """An envelope that cannot be decoded is dead-lettered (``undecodable``)."""
        # Decoders of other libraries may quote the body: only our own messages are kept.
        reason = describe(exc) if isinstance(exc, PayloadError) else type(exc).__name__
        log.warning(
            "message %s on %s is not a valid envelope (%s); dead-lettered",
            shown(delivery.id),
            delivery.queue,
            reason,
        )
        error = error_info(exc)
        error["message"] = str(exc) if isinstance(exc, PayloadError) else "the envelope is invalid"
        error["traceback"] = ""
        changes = {
            "status": TaskStatus.FAILED.value,
            "queue": delivery.queue,
            "error": error,
            "finished_at": self.clock.time(),
        }
        try:
            await within(
                self.kernel.results.update(delivery.id, changes, self.kernel.settings.result_ttl),
                _BEST_EFFORT,
            )
        except Exception as err:
            log.warning("could not record the failure of %s: %s", shown(delivery.id), describe(err))
        await persist(
            lambda: delivery.dead_letter("undecodable", reason),
            f"worker {self.name}: dead-lettering message {shown(delivery.id)}",
            self.rng,
        )
        self.stats.dead_lettered += 1

    async def poisoned(self, delivery: Delivery, exc: Exception) -> None:
        """Admitting ``delivery`` failed for a reason that is not an outage: dead-letter it
        (``undecodable``) so that the fetcher goes on with the rest of the batch."""
        log.warning(
            "message %s on %s could not be admitted (%s); dead-lettered",
            shown(delivery.id),
            delivery.queue,
            describe(exc),
        )
        try:
            await persist(
                lambda: delivery.dead_letter("undecodable", type(exc).__name__),
                f"worker {self.name}: dead-lettering message {shown(delivery.id)}",
                self.rng,
            )
            self.stats.dead_lettered += 1
        except Exception as again:
            log.warning("could not dead-letter %s (%s)", shown(delivery.id), describe(again))

    async def not_registered(self, delivery: Delivery, env: Envelope, exc: Exception) -> None:
        """A task name this worker does not know fails with NotRegistered."""
        error = error_info(exc)
        changes = {
            "status": TaskStatus.FAILED.value,
            "name": env.task,
            "queue": env.queue,
            "error": error,
            "finished_at": self.clock.time(),
            "attempts": env.attempt,
        }
        text = f"{error['type']}: {error['message']}"
        await self.settler.apply(
            Stray(env),
            NOT_REGISTERED,
            changes,
            lambda: delivery.dead_letter("not_registered", text),
            error=error,
        )

    async def lost(self, dead: DeadLetter) -> None:
        """A message the broker dead-lettered because its deliveries ran out (its workers
        kept dying): record the failure so nobody waits for it forever."""
        env = _envelope(dead.body)
        count = dead.delivery_count
        exc: Exception
        if dead.reason == "worker_lost":
            exc = WorkerLost(
                f"the worker running task {shown(dead.id)} was lost on each of its "
                f"{count or 'allowed'} deliveries"
            )
        else:
            # The broker isolated a message whose framing it could not read (``undecodable``):
            # the text it gives names the field, never the body.
            exc = EnvelopeError(f"the broker dead-lettered it as {dead.reason}: {dead.error or ''}")
        error = error_info(exc)
        error["traceback"] = ""
        changes: dict[str, Any] = {
            "status": TaskStatus.FAILED.value,
            "error": error,
            "finished_at": self.clock.time(),
        }
        if env is not None:
            changes["attempts"] = env.attempt
            stray = Stray(env, self.kernel.registry.get(env.task))
            await self.settler.apply(stray, LOST, changes, None, error=error)
            return
        # Not readable as a task: its record is closed, but there is no event to announce.
        await self.settler.durably(
            lambda: self.kernel.results.update(dead.id, changes, self.kernel.settings.result_ttl),
            "writing the record",
            shown(dead.id),
        )
        level = logging.ERROR if dead.reason == "worker_lost" else logging.WARNING
        log.log(
            level,
            "message %s failed: dead-lettered by the broker as %s",
            shown(dead.id),
            dead.reason,
        )
        self.stats.count(TaskStatus.FAILED)


def _envelope(body: bytes) -> Envelope | None:
    try:
        return codec.decode_envelope(body)
    except Exception:
        return None
