"""Settling messages that will never run: undecodable, unknown task, poisoned, and those the
broker dead-lettered because their workers kept dying (``worker_lost``).

Each one finishes the task's record where an id is known, so nobody waits for it forever,
and logs one line without any part of the message body.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from .. import codec
from .._waiters import within
from ..brokers.base import DeadLetter, Delivery
from ..codec import EnvelopeError
from ..errors import PayloadError, WorkerLost
from ..message import Envelope, TaskStatus
from ..middleware import TaskEvent
from .resilience import describe, persist
from .settle import error_info

if TYPE_CHECKING:
    from .worker import Worker

__all__ = ["lost", "poisoned", "undecodable", "unknown"]

log = logging.getLogger("taskflow.worker")

_BEST_EFFORT = 1.0  # seconds for a record write that may not even have a real id


async def undecodable(w: Worker, delivery: Delivery, exc: Exception) -> None:
    """An envelope that cannot be decoded is dead-lettered (``undecodable``)."""
    # Decoders of other libraries may quote the body: only our own messages are kept.
    reason = describe(exc) if isinstance(exc, PayloadError) else type(exc).__name__
    log.warning(
        "message %s on %s is not a valid envelope (%s); dead-lettered",
        delivery.id,
        delivery.queue,
        reason,
    )
    error = error_info(exc)
    error["message"] = str(exc) if isinstance(exc, PayloadError) else "the envelope is invalid"
    error["traceback"] = ""
    try:
        await within(
            w.app.results.update(
                delivery.id,
                {
                    "status": TaskStatus.FAILED.value,
                    "queue": delivery.queue,
                    "error": error,
                    "finished_at": w.clock.time(),
                },
                w.app.result_ttl,
            ),
            _BEST_EFFORT,
        )
    except Exception as err:
        log.warning("could not record the failure of %s: %s", delivery.id, describe(err))
    await persist(
        lambda: delivery.dead_letter("undecodable", reason),
        f"worker {w.name}: dead-lettering message {delivery.id}",
        w.rng,
    )
    w.counts["dead_lettered"] += 1


async def poisoned(w: Worker, delivery: Delivery, exc: Exception) -> None:
    """Admitting ``delivery`` failed for a reason that is not an outage: dead-letter it
    (``undecodable``) so that the fetcher goes on with the rest of the batch."""
    log.warning(
        "message %s on %s could not be admitted (%s); dead-lettered",
        delivery.id,
        delivery.queue,
        describe(exc),
    )
    try:
        await persist(
            lambda: delivery.dead_letter("undecodable", type(exc).__name__),
            f"worker {w.name}: dead-lettering message {delivery.id}",
            w.rng,
        )
        w.counts["dead_lettered"] += 1
    except Exception as again:
        log.warning("could not dead-letter %s (%s)", delivery.id, describe(again))


async def unknown(w: Worker, delivery: Delivery, env: Envelope, exc: Exception) -> None:
    """A task name this worker does not know fails with NotRegistered."""
    error = error_info(exc)
    log.error("%s[%s]: %s; dead-lettered", env.task, env.id, exc)
    changes = {
        "status": TaskStatus.FAILED.value,
        "name": env.task,
        "queue": env.queue,
        "error": error,
        "finished_at": w.clock.time(),
        "attempts": env.attempt,
    }
    what = f"worker {w.name}: %s of task {env.id}"
    await persist(
        lambda: w.app.results.update(env.id, changes, w.app.result_ttl),
        what % "writing the record",
        w.rng,
    )
    if env.canvas:
        await persist(
            lambda: w.app._advance_canvas(env, TaskStatus.FAILED, None),
            what % "advancing the canvas",
            w.rng,
        )
    text = f"{error['type']}: {error['message']}"
    await persist(
        lambda: delivery.dead_letter("not_registered", text), what % "dead-lettering", w.rng
    )
    w.counts["failed"] += 1
    w.counts["dead_lettered"] += 1
    if w.bus.active:
        w.bus.publish(
            TaskEvent(
                "finish",
                env.id,
                env.task,
                env.queue,
                TaskStatus.FAILED.value,
                env.attempt,
                None,
                error,
                w.clock.time(),
            )
        )


async def lost(w: Worker, dead: DeadLetter) -> None:
    """A message the broker dead-lettered because its deliveries ran out (its workers kept
    dying): record the failure so nobody waits for it forever."""
    try:
        env: Envelope | None = codec.decode_envelope(dead.body)
    except Exception:
        env = None
    count = dead.delivery_count
    exc: Exception
    if dead.reason == "worker_lost":
        exc = WorkerLost(
            f"the worker running task {dead.id} was lost on each of its "
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
        "finished_at": w.clock.time(),
    }
    if env is not None:
        changes["attempts"] = env.attempt
    what = f"worker {w.name}: %s of lost task {dead.id}"
    await persist(
        lambda: w.app.results.update(dead.id, changes, w.app.result_ttl),
        what % "writing the record",
        w.rng,
    )
    if dead.reason == "worker_lost":
        log.error(
            "%s[%s] failed: its worker was lost on %s deliveries; dead-lettered",
            env.task if env else "?",
            dead.id,
            count or "all allowed",
        )
    else:
        log.warning("message %s failed: dead-lettered by the broker as %s", dead.id, dead.reason)
    w.counts["failed"] += 1
    if env is None:
        return
    event = TaskEvent(
        "failure",
        env.id,
        env.task,
        env.queue,
        TaskStatus.FAILED.value,
        env.attempt,
        None,
        error,
        w.clock.time(),
    )
    await w.app._run_hooks("failure", event, w.app.registry.get(env.task))
    finish = TaskEvent(
        "finish",
        env.id,
        env.task,
        env.queue,
        event.status,
        env.attempt,
        None,
        error,
        event.timestamp,
    )
    await w.app._run_hooks("finish", finish, None)
    w.bus.publish(finish)
    if isinstance(env.canvas, dict) and env.canvas:
        await persist(
            lambda: w.app._advance_canvas(env, TaskStatus.FAILED, None),
            what % "advancing the canvas",
            w.rng,
        )
