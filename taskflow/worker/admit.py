"""Taking fetched messages in: decode, check, look the task up, and settle at once what
will not run (undecodable, unknown task, cancelled, expired, lost once too often).

One bad message never stops the fetcher: whatever goes wrong while admitting it is
settled for that message alone, and a backend that is down is waited out (see
:mod:`.resilience`).
"""

from __future__ import annotations

import asyncio
import logging
import math
from typing import TYPE_CHECKING, Any

from .. import codec
from ..brokers.base import Delivery
from ..errors import NotRegistered, PayloadError
from ..message import Envelope
from . import rejects
from .resilience import describe
from .scheduler import Job

if TYPE_CHECKING:
    from .worker import Worker

__all__ = ["admit", "check_envelope", "payload_error", "record_lost"]

log = logging.getLogger("taskflow.worker")


async def admit(w: Worker, delivery: Delivery) -> None:
    """Hold ``delivery`` for running, or settle it now; never raises but cancellation."""
    held = False
    try:
        held = await _admit(w, delivery)
    except asyncio.CancelledError:
        raise  # stopping: the message is handed back or comes back after its lease
    except Exception as exc:
        await rejects.poisoned(w, delivery, exc)
    finally:
        if not held:
            w.leases.drop(delivery)


async def _admit(w: Worker, delivery: Delivery) -> bool:
    try:
        env = codec.decode_envelope(delivery.body)
        check_envelope(env)
    except Exception as exc:  # any decoder failure, including RecursionError
        await rejects.undecodable(w, delivery, exc)
        return False
    task = w.app.registry.get(env.task)
    if task is None:
        await rejects.unknown(w, delivery, env, NotRegistered(env.task))
        return False
    job = Job(env, delivery, task)
    if env.id in w._cancelled:
        await w.settle.cancelled(job, started=False)
        return False
    if env.expires is not None and env.expires <= w.clock.time():
        await w.settle.expired(job)
        return False
    if delivery.delivery_count > 1:
        if task.options.on_lost == "fail":
            await w.settle.worker_lost(job)
            return False
        log.warning(
            "%s[%s] delivered again (delivery %d of attempt %d): the worker running it was lost",
            env.task,
            env.id,
            delivery.delivery_count,
            env.attempt,
        )
    w._held[env.id] = job
    w._sched.push(job)
    return True


def check_envelope(env: Envelope) -> None:
    """What the worker relies on beyond the decoder's checks; raises EnvelopeError."""
    if not _int_at_least(env.attempt, 1) or not _int_at_least(env.max_retries, 0):
        raise codec.EnvelopeError("envelope attempt must be >= 1 and max_retries >= 0")
    if env.timeout is not None and not (math.isfinite(env.timeout) and env.timeout > 0):
        raise codec.EnvelopeError("envelope timeout must be a positive number of seconds")
    if env.expires is not None and not math.isfinite(env.expires):
        raise codec.EnvelopeError("envelope expires must be a finite time")
    if env.canvas is not None and not isinstance(env.canvas, dict):
        raise codec.EnvelopeError("envelope canvas must be an object")
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in env.headers.items()):
        raise codec.EnvelopeError("envelope headers must map strings to strings")
    if not all(isinstance(k, str) for k in env.kwargs):
        raise codec.EnvelopeError("envelope kwargs keys must be strings")


def payload_error(task: str, exc: Exception) -> PayloadError:
    """Arguments that could not be decoded, as a PayloadError that carries no values."""
    if isinstance(exc, PayloadError):
        return exc
    # Decoders of other libraries (protobuf, pydantic, deep recursion) may quote the
    # offending value in their messages: name only what failed.
    return PayloadError(f"{task}: arguments could not be decoded ({type(exc).__name__})")


def _int_at_least(value: Any, low: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


async def record_lost(w: Worker) -> None:
    """Fail the records of messages the broker dead-lettered as ``worker_lost``."""
    for dead in w.app.broker.take_lost():
        try:
            await rejects.lost(w, dead)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning(
                "worker %s: could not record lost task %s (%s)", w.name, dead.id, describe(exc)
            )
