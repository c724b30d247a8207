"""What a failed attempt leads to (a retry or the dead-letter list), and retry delays:
exponential backoff, capped, with optional full jitter."""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

from ..errors import PayloadError, Reject, Retry, TaskTimeout

if TYPE_CHECKING:
    from .scheduler import Job
    from .worker import Worker

__all__ = ["backoff_delay", "route_failure"]


def backoff_delay(
    attempt: int, base: float, cap: float, jitter: bool, rng: random.Random | None = None
) -> float:
    """Delay before retry number ``attempt`` (1 for the first retry).

    ``base * 2**(attempt-1)`` capped at ``cap``; with ``jitter`` a uniform draw from
    ``[0, that]`` ("full jitter"), which spreads a thundering herd of retries.
    """
    exponent = min(max(attempt - 1, 0), 63)
    delay = min(cap, base * (2.0**exponent))
    if jitter:
        delay = (rng or random).uniform(0.0, delay)
    return max(0.0, delay)


async def route_failure(w: Worker, job: Job, exc: BaseException, duration: float) -> None:
    """Retry ``job`` if its error and its budget allow, else fail and dead-letter it."""
    if isinstance(exc, Reject):
        await w.settle.failed(job, exc, duration, reason="rejected")
        return
    opts = job.task.options
    can_retry = job.attempt <= job.envelope.max_retries
    if isinstance(exc, Retry):
        cause: BaseException = exc.exc or exc
        if can_retry:
            delay = exc.countdown if exc.countdown is not None else _backoff(w, job)
            await w.settle.retry(job, cause, delay, duration)
            return
        await w.settle.failed(job, cause, duration)
        return
    retriable = isinstance(exc, (*opts.retry_on, TaskTimeout))
    if can_retry and retriable and not isinstance(exc, PayloadError):
        await w.settle.retry(job, exc, _backoff(w, job), duration)
        return
    await w.settle.failed(job, exc, duration)


def _backoff(w: Worker, job: Job) -> float:
    opts = job.task.options
    return backoff_delay(
        job.attempt, opts.retry_backoff, opts.retry_backoff_max, opts.retry_jitter, w.rng
    )
