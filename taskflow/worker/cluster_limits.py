"""Cluster-wide limits: admission of jobs whose task declares ``cluster_rate_limit`` or
``cluster_concurrency``, against the limiter its broker shares between workers.

The executor asks :meth:`ClusterGate.admit` once a job has a slot reserved, before it
runs: first a token (``cluster_rate_limit``), then a permit (``cluster_concurrency``). A
refusal answers how long to wait; the executor frees the slot at once and the job waits
in the scheduler's throttled heap, its message still held and its lease renewed, until
then -- or until a permit of its task is released in this worker, which wakes it early.
A job keeps a token it took while it waits for a permit, so it never takes two.

A permit is a lease: :class:`ClusterGate` renews every permit it holds each third of the
limiter's lease while the task runs, and releases it when the job is settled. A worker
that dies stops renewing, and its permits are free again once their lease runs out.

Waits are bounded so that nothing busy-loops and a release in another worker is noticed:
a permit is asked for again at the earliest of the next expiry the limiter reported and
:data:`PERMIT_POLL` seconds; while one job of a task waits, the others of that task wait
with it instead of asking the backend too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Callable, Iterable
from typing import Final

from .._waiters import within
from ..brokers.base import Broker
from ..brokers.limits import ClusterLimiter
from ..clock import Clock
from ..errors import ConfigError
from ..kernel import TaskDef
from .resilience import Outage, describe
from .scheduler import Job

__all__ = ["PERMIT_POLL", "ClusterGate", "check_limits"]

log = logging.getLogger("taskflow.worker")

PERMIT_POLL: Final = 0.25
"""The longest a job waits before asking again for a permit held in another worker."""

_RELEASE_TIMEOUT: Final = 5.0


def has_cluster_limit(task: TaskDef) -> bool:
    """Whether ``task`` declares a cluster-wide limit."""
    opts = task.options
    return opts.cluster_rate_limit is not None or opts.cluster_concurrency is not None


def check_limits(tasks: Iterable[TaskDef], broker: Broker) -> ClusterLimiter | None:
    """The broker's limiter if any of ``tasks`` needs one; ``ConfigError`` naming the task
    and the backend when the broker cannot share a limit."""
    limited = [task.name for task in tasks if has_cluster_limit(task)]
    if not limited:
        return None
    limiter = broker.limiter()
    if limiter is None:
        raise ConfigError(
            f"task {limited[0]!r} declares a cluster-wide limit (cluster_rate_limit or "
            f"cluster_concurrency), but the broker {broker!r} cannot share limits between "
            "workers; use a Redis, NATS or SQLite broker, or a per-process rate_limit"
        )
    return limiter


class ClusterGate:
    """One worker's side of the shared limits: tokens, permits, their renewal."""

    def __init__(self, name: str, clock: Clock) -> None:
        self._name = name
        self._clock = clock
        self._limiter: ClusterLimiter | None = None
        self._broker: Broker | None = None
        self._blocked: dict[str, float] = {}
        self._held: dict[str, dict[str, Job]] = {}
        self._renewal: asyncio.Task[None] | None = None
        self._outage = Outage(f"{name}: cluster-wide limits")
        self.on_release: Callable[[str], None] = lambda _key: None
        """Called with a task name when one of its permits was released here."""

    def open(self, tasks: Iterable[TaskDef], broker: Broker) -> None:
        """As the worker starts: ``ConfigError`` if a task's limit cannot be shared."""
        check_limits(tasks, broker)
        self._broker = broker
        self._limiter = broker.limiter()

    @staticmethod
    def limits(job: Job) -> bool:
        """Whether ``job`` must be admitted here before it runs."""
        return has_cluster_limit(job.task) and job.permit is None

    async def admit(self, job: Job) -> float:
        """0.0 once ``job`` may run (its token taken, its permit held), else the seconds
        to wait before asking again."""
        key = job.task.name
        if self._limiter is None:  # a task registered after the worker started
            assert self._broker is not None, "ClusterGate.open was not called"
            check_limits([job.task], self._broker)
            raise AssertionError("unreachable: check_limits raised")
        now = self._clock.monotonic()
        blocked = self._blocked.get(key, 0.0)
        if blocked > now:
            return blocked - now
        try:
            wait = await self._ask(job)
        except Exception as exc:  # the backend is away: ask again after a pause
            self._outage.failed(exc)
            return self._block(key, PERMIT_POLL)
        self._outage.recovered()
        return wait

    async def _ask(self, job: Job) -> float:
        assert self._limiter is not None
        opts, key = job.task.options, job.task.name
        rate = opts.cluster_rate_limit
        if rate is not None and not job.token:
            wait = await self._limiter.take_token(key, rate.rate, rate.burst or 1)
            if wait > 0:
                return self._block(key, wait)
            job.token = True
        if opts.cluster_concurrency is not None:
            holder = f"{job.envelope.id}:{secrets.token_hex(4)}"
            wait = await self._limiter.acquire(key, holder, opts.cluster_concurrency)
            if wait > 0:
                return self._block(key, min(wait, PERMIT_POLL))
            job.permit = holder
            self._held.setdefault(key, {})[holder] = job
            self._renew_soon()
        return 0.0

    def _block(self, key: str, wait: float) -> float:
        self._blocked[key] = self._clock.monotonic() + wait
        return wait

    async def release(self, job: Job) -> None:
        """Give ``job``'s permit back (it was settled or handed back); best effort: a
        permit not released runs out after its lease."""
        holder, job.permit = job.permit, None
        if holder is None or self._limiter is None:
            return
        key = job.task.name
        held = self._held.get(key, {})
        held.pop(holder, None)
        if not held:
            self._held.pop(key, None)
        self._blocked.pop(key, None)
        try:
            await within(self._limiter.release(key, holder), _RELEASE_TIMEOUT)
        except Exception as exc:
            log.warning(
                "%s: could not release a %s permit (%s); it is free again after its lease",
                self._name,
                key,
                describe(exc),
            )
        self.on_release(key)

    # -- renewal ---------------------------------------------------------------------
    def _renew_soon(self) -> None:
        if self._renewal is None or self._renewal.done():
            self._renewal = asyncio.get_running_loop().create_task(
                self._renew_loop(), name="taskflow-permits"
            )

    async def _renew_loop(self) -> None:
        assert self._limiter is not None
        limiter = self._limiter
        while self._held:
            await asyncio.sleep(limiter.lease / 3)
            for key, held in list(self._held.items()):
                holders = list(held)
                try:
                    renewed = await limiter.renew(key, holders)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    log.warning(
                        "%s: could not renew %s permits (%s)", self._name, key, describe(exc)
                    )
                    continue
                for holder, ok in zip(holders, renewed, strict=True):
                    if not ok and holder in held:
                        log.warning(
                            "%s: a %s permit ran out before it was renewed; the "
                            "cluster may run one more of this task meanwhile",
                            self._name,
                            key,
                        )

    async def close(self) -> None:
        """Stop renewing (the worker stopped; permits still held run out)."""
        renewal, self._renewal = self._renewal, None
        if renewal is not None:
            renewal.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewal
