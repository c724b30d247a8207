"""The beat loop: enqueue each due run of every schedule, in exactly one process.

Leadership is a lease built on ``set_nx`` alone. Time is cut into epochs of ``lease``
seconds; the beat that sets ``beat:<app>:leader:<k>`` first leads during epoch ``k``.
The leader claims epoch ``k+1`` a little before it begins (``lease / 4``), so while it is
alive it keeps leading; followers try to claim the current epoch on every tick, so when
the leader dies (or stops and releases its keys) another beat leads from the next epoch
at the latest -- within one lease. Clocks of beat hosts must agree to better than
``lease / 4`` for the hand-over to be clean; a short overlap of two leaders is harmless,
because each run is enqueued with the deterministic task id and idempotency key
``beat:<name>:<fire_ts>``, so a second enqueue of the same run returns the first.

Only the leader keeps run state in memory (the next due time per schedule); it loads the
last handled fire time from the store whenever it (re)gains leadership and writes it after
each run, so a new leader, or a restarted one, knows what was missed.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import math
import os
import socket
import uuid
from dataclasses import dataclass
from typing import Any

from .._waiters import within
from ..clock import Clock
from ..errors import IdempotencyConflict
from ..kernel import Kernel, Service
from ..kernel.service import RUNNING
from .periodic import PeriodicRegistry
from .schedule import Schedule, fire_key, latest_fire, next_fire

__all__ = ["Beat", "Firing"]

log = logging.getLogger("taskflow.beat")


@dataclass(frozen=True, slots=True)
class Firing:
    """One run that a tick enqueued (or found already enqueued under its id)."""

    name: str
    fire_ts: float
    task_id: str


@dataclass(slots=True)
class _Due:
    spec: dict[str, Any]
    next: float


class Beat(Service):
    """Enqueues the runs of an app's periodic tasks; any number may run at once.

    ``lease``: seconds of one leadership epoch (a dead leader is replaced within this);
    ``max_interval``: the longest the loop sleeps (how soon stored changes are seen);
    ``misfire_grace``: how late a run may be and still count as on time for
    ``missed="skip"`` schedules (default: ``lease + 2 * max_interval``, so that a leader
    hand-over does not skip runs).

    Its lifecycle is the :class:`~taskflow.kernel.Service` one (``start``, ``stop``,
    ``run``, a context manager); a beat holds no running work, so ``stop_now`` is ``stop``.
    """

    kind = "beat"

    def __init__(
        self,
        kernel: Kernel,
        periodic: PeriodicRegistry,
        *,
        lease: float = 10.0,
        max_interval: float = 1.0,
        misfire_grace: float | None = None,
        name: str | None = None,
        clock: Clock | None = None,
    ) -> None:
        for option, value in (("lease", lease), ("max_interval", max_interval)):
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not math.isfinite(value)
                or value <= 0
            ):
                raise ValueError(
                    f"beat {option} must be a positive number of seconds, got {value!r}"
                )
        super().__init__(
            name or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}",
            kernel.loop,
            kernel.services,
        )
        self.kernel = kernel
        self.lease = float(lease)
        self.max_interval = float(max_interval)
        self.misfire_grace = (
            float(misfire_grace)
            if misfire_grace is not None
            else self.lease + 2 * self.max_interval
        )
        self.id = self.name
        self.clock = clock or kernel.clock
        self.periodic = periodic
        self.store = self.periodic.store
        self._holders: dict[int, str] = {}
        self._due: dict[str, _Due] = {}
        self._leading = False

    def __repr__(self) -> str:
        return f"<Beat {self.id} app={self.kernel.settings.name} lease={self.lease:g}s>"

    @property
    def is_leader(self) -> bool:
        """Whether this beat led at its last tick."""
        return self._leading

    # -- public, thread-safe ---------------------------------------------------------
    def start(self) -> Beat:
        """Start in the background on the app's loop; returns after the first tick."""
        return super().start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop ticking and give up leadership; idempotent, safe from any thread.

        Waits at most ``timeout`` seconds: a beat holds no work, so a tick held up by a
        store that is away need not hold up the caller (it stops after that tick).
        """
        self._await_stopped(self._ask_stop(timeout))

    def stop_now(self) -> None:
        """Same as :meth:`stop`: a beat holds no running work."""
        self.stop()

    def tick(self) -> list[Firing]:
        """Test seam: one pass at ``clock.time()``; returns the runs it enqueued.

        Only for a beat that was not started; drive time with a FakeClock.
        """
        self._check_new("tick()")
        return self.kernel.call(self._tick_now())

    async def _tick_now(self) -> list[Firing]:
        await self.kernel.connect()
        return await self._tick(self.clock.time())

    # -- the loop --------------------------------------------------------------------
    async def _serve(self, ready: concurrent.futures.Future[None]) -> None:
        await self.kernel.connect()
        try:
            log.info(
                "beat %s started for app %s (lease %gs)",
                self.id,
                self.kernel.settings.name,
                self.lease,
            )
            delay = await self._tick_safely(0.5)
            ready.set_result(None)  # after the first tick: leadership and baselines are known
            await self._loop_until_stopped(delay)
        finally:
            with contextlib.suppress(Exception):
                await self._release()
            log.info("beat %s stopped", self.id)

    async def _loop_until_stopped(self, delay: float) -> None:
        stopping = self._stop_requested
        while self.state == RUNNING:
            with contextlib.suppress(TimeoutError):
                await within(stopping(), delay)
            if self.state == RUNNING:
                delay = await self._tick_safely(delay)

    async def _tick_safely(self, previous: float) -> float:
        """One tick; returns how long to sleep (backing off while ticks fail)."""
        try:
            await self._tick(self.clock.time())
        except Exception as exc:
            backoff = min(max(previous * 2, 0.5), 10.0)
            log.warning("beat %s: tick failed (%s); retrying in %.1fs", self.id, exc, backoff)
            return backoff
        return self._next_wake(self.clock.time())

    def _next_wake(self, now: float) -> float:
        epoch = math.floor(now / self.lease)
        wake = min(self.max_interval, (epoch + 1) * self.lease - now)
        if self._leading:
            margin = self.lease / 4
            if epoch + 1 not in self._holders:
                wake = min(wake, (epoch + 1) * self.lease - margin - now)
            # A run still due (its enqueue failed) is retried after max_interval, not in a
            # tight loop.
            upcoming = [d.next for d in self._due.values() if d.next > now]
            if upcoming:
                wake = min(wake, min(upcoming) - now)
        return max(0.005, wake)

    async def _release(self) -> None:
        for epoch, holder in list(self._holders.items()):
            if holder == self.id:
                await self.store.release(epoch, self.id)
        self._holders.clear()
        self._leading = False

    # -- one tick --------------------------------------------------------------------
    async def _tick(self, now: float) -> list[Firing]:
        if not await self._lead(now):
            self._due.clear()  # whoever leads next loads the run state from the store
            return []
        schedules, paused = await self.periodic.load()
        for name in [n for n in self._due if n not in schedules or n in paused]:
            del self._due[name]  # a resumed schedule starts afresh from the store
        fired: list[Firing] = []
        for name, schedule in schedules.items():
            if name in paused:
                continue
            try:
                firing = await self._handle(schedule, now)
            except Exception as exc:
                log.warning(
                    "beat %s: schedule %r failed (%r); retrying at the next tick",
                    self.id,
                    name,
                    exc,
                )
                continue
            if firing is not None:
                fired.append(firing)
        return fired

    async def _lead(self, now: float) -> bool:
        epoch = math.floor(now / self.lease)
        ttl = 3 * self.lease
        if self._holders.get(epoch) != self.id:
            self._holders[epoch] = await self.store.claim(epoch, self.id, ttl)
        leading = self._holders[epoch] == self.id
        boundary = (epoch + 1) * self.lease
        if leading and now >= boundary - self.lease / 4 and epoch + 1 not in self._holders:
            self._holders[epoch + 1] = await self.store.claim(epoch + 1, self.id, ttl)
        for old in [e for e in self._holders if e < epoch]:
            del self._holders[old]
        if leading != self._leading:
            log.info("beat %s %s", self.id, "leads" if leading else "follows")
            self._leading = leading
        return leading

    async def _handle(self, schedule: Schedule, now: float) -> Firing | None:
        spec = schedule.to_dict()
        due = self._due.get(schedule.name)
        if due is None or due.spec != spec:
            last = await self.store.last(schedule.name)
            if last is None:  # a new schedule starts from now; nothing was missed
                last = now
                await self.store.set_last(schedule.name, now)
            due = self._due[schedule.name] = _Due(spec, next_fire(schedule, last))
        if due.next > now:
            return None
        latest = latest_fire(schedule, now) or due.next
        late = now - latest > self.misfire_grace
        firing = None
        if schedule.missed == "once" or not late:
            firing = await self._fire(schedule, latest)
        if latest > due.next or late:
            log.info(
                "beat: schedule %r missed runs since %s; %s",
                schedule.name,
                fire_key(schedule.name, due.next).rsplit(":", 1)[1],
                "fired the latest once" if firing is not None else "skipped them",
            )
        await self.store.set_last(schedule.name, latest)
        due.next = next_fire(schedule, latest)
        return firing

    async def _fire(self, schedule: Schedule, fire_ts: float) -> Firing | None:
        key = fire_key(schedule.name, fire_ts)
        options: dict[str, Any] = {"task_id": key, "idempotency_key": key}
        if schedule.queue is not None:
            options["queue"] = schedule.queue
        if schedule.priority is not None:
            options["priority"] = schedule.priority
        prepared = self.kernel.prepare(schedule.task, schedule.args, schedule.kwargs, options)
        try:
            ids = await self.kernel.enqueuer.enqueue([prepared])
        except IdempotencyConflict as exc:
            log.warning("beat: run %s was already enqueued with other arguments: %s", key, exc)
            return None
        log.debug("beat: enqueued %s (%s)", key, schedule.task)
        return Firing(schedule.name, fire_ts, ids[0])
