"""Riding out a failed step: retry with backoff, and log an outage once, not per attempt.

A worker talks to a broker and a result store that restart, fail over and time out. A step
that fails for such a reason (a :class:`~taskflow.errors.BrokerError`, an ``OSError``, a
timeout) is tried again with capped, jittered exponential backoff until it succeeds or the
worker stops; the first failure is logged at WARNING with its cause, the recovery at INFO,
and the attempts in between only at DEBUG. Anything else is a bug or a poisoned message and
is left to the caller.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

from ..errors import BrokerError, PayloadError

__all__ = [
    "NOT_RETRIED",
    "TRANSIENT",
    "Backoff",
    "Outage",
    "cancel_swallowed",
    "describe",
    "persist",
]

log = logging.getLogger("taskflow.worker")

T = TypeVar("T")

TRANSIENT: tuple[type[BaseException], ...] = (BrokerError, ConnectionError, TimeoutError, OSError)
"""Errors of a backend that is down or slow: worth trying again."""

NOT_RETRIED: tuple[type[BaseException], ...] = (asyncio.CancelledError, PayloadError)
"""What :func:`persist` (and a caller's first try before it) lets through at once: the
worker stopping, and a value the backend refuses (it would on every try)."""


def describe(exc: BaseException) -> str:
    """``Type: message`` on one line, short (for log lines; no traceback)."""
    text = " ".join(str(exc).split())
    if len(text) > 200:
        text = text[:197] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class Backoff:
    """Delays for consecutive failures: ``first`` doubling up to ``cap``, jittered."""

    __slots__ = ("_cap", "_first", "_next", "_rng")

    def __init__(self, rng: random.Random, first: float = 0.05, cap: float = 5.0) -> None:
        self._rng = rng
        self._first = first
        self._cap = cap
        self._next = first

    def delay(self) -> float:
        """The next delay (between half and all of the current step), then double it."""
        step = self._next
        self._next = min(self._next * 2, self._cap)
        return step * (0.5 + 0.5 * self._rng.random())

    def reset(self) -> None:
        """After a success: start again from ``first``."""
        self._next = self._first


class Outage:
    """Logs one failing activity: the first failure, then its recovery, nothing between."""

    __slots__ = ("_failures", "_what")

    def __init__(self, what: str) -> None:
        self._what = what
        self._failures = 0

    @property
    def failing(self) -> bool:
        """True between a failure and the next success."""
        return self._failures > 0

    def failed(self, exc: BaseException) -> None:
        """Note a failure (WARNING the first time)."""
        self._failures += 1
        if self._failures == 1:
            log.warning("%s failed (%s); retrying with backoff", self._what, describe(exc))
        else:
            log.debug("%s failed again (%s)", self._what, describe(exc))

    def recovered(self) -> None:
        """Note a success (INFO if it ends an outage)."""
        if self._failures:
            log.info("%s succeeded after %d failed attempts", self._what, self._failures)
            self._failures = 0


async def persist(
    step: Callable[[], Awaitable[T]],
    what: str,
    rng: random.Random,
    *,
    cap: float = 5.0,
    unexpected: int = 2,
    failed: Exception | None = None,
) -> T:
    """Await ``step()`` until it succeeds.

    :data:`TRANSIENT` errors (a backend that is down) are retried for as long as it takes;
    any other error up to ``unexpected`` more times (the first one is logged with its
    traceback), then it propagates. Cancellation (the worker stopping) and a
    :class:`~taskflow.errors.PayloadError` (a value the backend refuses, as it would on
    every try) propagate at once (:data:`NOT_RETRIED`). ``failed``: the error of a first
    try the caller made itself (a fast path that makes no coroutine of this function while
    all is well), handled as if this call had made it.
    """
    retries: _Retries | None = None
    while True:
        if failed is None:
            try:
                result = await step()
            except NOT_RETRIED:
                raise
            except Exception as exc:
                failed = exc
            else:
                if retries is not None:
                    retries.outage.recovered()
                return result
        if retries is None:
            retries = _Retries(what, rng, cap, unexpected)
        await retries.after(failed)
        failed = None


class _Retries:
    """The failures of one :func:`persist` call so far."""

    __slots__ = ("backoff", "outage", "surprises", "unexpected", "what")

    def __init__(self, what: str, rng: random.Random, cap: float, unexpected: int) -> None:
        self.what = what
        self.outage = Outage(what)
        self.backoff = Backoff(rng, cap=cap)
        self.surprises = 0
        self.unexpected = unexpected

    async def after(self, exc: Exception) -> None:
        """Note ``exc`` (an outage's first failure is logged, and the first unexpected
        error), then wait out the backoff; raises ``exc`` if it is one unexpected error
        too many."""
        if isinstance(exc, TRANSIENT):
            self.outage.failed(exc)
        else:
            self.surprises += 1
            if self.surprises > self.unexpected:
                raise exc
            if self.surprises == 1:
                log.warning("%s failed unexpectedly; retrying", self.what, exc_info=exc)
        await asyncio.sleep(self.backoff.delay())


def cancel_swallowed() -> bool:
    """True if this task was cancelled but the CancelledError never reached it.

    On Python 3.11 ``asyncio.wait_for`` returns the inner result instead of raising when
    the inner future completes in the same loop step as the cancel (a broker wake-up racing
    ``stop()``); a loop that only trusted the exception would then run forever.
    """
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
