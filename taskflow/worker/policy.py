"""What a failed attempt leads to: another attempt after a delay, or the dead-letter list.

:func:`decide` is the whole policy, pure: the settler carries the verdict out. Retry delays
are exponential backoff, capped, with optional full jitter.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from ..errors import PayloadError, Reject, Retry, TaskTimeout
from ..options import countdown_problem
from .scheduler import Job

__all__ = ["Fail", "RetryIn", "backoff_delay", "decide"]


@dataclass(frozen=True, slots=True)
class RetryIn:
    """Run the task again after ``delay`` seconds; ``error`` is why this attempt failed."""

    delay: float
    error: BaseException


@dataclass(frozen=True, slots=True)
class Fail:
    """Fail the task and dead-letter its message with ``reason``."""

    reason: str
    error: BaseException


def decide(job: Job, exc: BaseException, rng: random.Random | None = None) -> RetryIn | Fail:
    """Whether ``job``'s attempt, which raised ``exc``, is retried.

    ``Reject`` never is (reason ``rejected``); ``Retry`` is while retries are left (after its
    ``countdown``, else the backoff), and its ``exc`` is what the attempt is said to have
    failed with. Any other error is retried while retries are left if the task lists it in
    ``retry_on`` or it is a ``TaskTimeout`` -- but never a ``PayloadError``, which the same
    arguments would raise again.
    """
    if isinstance(exc, Reject):
        return Fail("rejected", exc)
    can_retry = job.attempt <= job.envelope.max_retries
    if isinstance(exc, Retry):
        problem = countdown_problem(exc.countdown)
        if problem:
            # Raised as Retry(countdown=...) itself: a bug in the task, not a retry.
            return Fail("failed", ValueError(f"{job.envelope.task}: retry countdown {problem}"))
        cause: BaseException = exc.exc or exc
        if not can_retry:
            return Fail("failed", cause)
        delay = max(0.0, exc.countdown) if exc.countdown is not None else _backoff(job, rng)
        return RetryIn(delay, cause)
    retriable = isinstance(exc, (*job.task.options.retry_on, TaskTimeout))
    if can_retry and retriable and not isinstance(exc, PayloadError):
        return RetryIn(_backoff(job, rng), exc)
    return Fail("failed", exc)


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


def _backoff(job: Job, rng: random.Random | None) -> float:
    opts = job.task.options
    return backoff_delay(
        job.attempt, opts.retry_backoff, opts.retry_backoff_max, opts.retry_jitter, rng
    )
