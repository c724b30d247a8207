"""The fetcher: asks the broker for as many messages as the prefetch window has room for,
admits them (decode, check, look the task up) and hands them to the scheduler.

One loop serves both ways a worker runs. Started, it waits up to ``poll_interval`` in each
fetch and runs until the worker stops. In ``run_until_idle`` (``until_idle=True``) it does
not wait, and returns once the broker has nothing due and nothing the worker holds can
still run: the test seam is the production loop, not a copy of it.

One bad message never stops the fetcher: whatever goes wrong while admitting it is
settled for that message alone, and a backend that is down is waited out (see
:mod:`.resilience`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable, Iterable
from typing import Final

from .. import codec
from .._masking import shown
from .._waiters import within
from ..brokers.base import DeadLetter, Delivery, FetchResult
from ..clock import Clock
from ..errors import NotRegistered
from ..kernel import Kernel
from ..message import Envelope
from .cluster_limits import has_cluster_limit
from .leases import LeaseKeeper
from .rejects import Rejects
from .resilience import TRANSIENT, Backoff, Outage, cancel_swallowed, describe
from .scheduler import Job, Scheduler
from .settle import Settler

__all__ = ["Fetcher", "Window"]

log = logging.getLogger("taskflow.worker")

# A fetch that fails this many times in a row with an error that is not a backend being
# down (a bug) kills the fetch stage, which stops the worker (Worker.fatal).
_FATAL_FETCH_ERRORS: Final = 5
# Task ids cancelled before their message arrived, remembered so that it is not run.
_REFUSED_MAX: Final = 10_000
# A window with a deeper buffer for short tasks (``Window.short_buffer``) uses it while the
# bodies it ran took less than this on average (seconds), smoothed by ``_SMOOTHING``. A
# body counts for at most ``_LONGEST`` seconds: a few short ones after a long one bring the
# deeper buffer back, however long that one ran.
SHORT_TASK: Final = 0.02
_SMOOTHING: Final = 0.25
_LONGEST: Final = 10 * SHORT_TASK


class Window:
    """The messages a worker holds -- buffered, running, or writing their outcome -- from
    their fetch until each is settled or handed back.

    At most ``concurrency + buffer`` of them are not yet finished (buffered or running);
    those whose code has returned and whose outcome is being written count apart, so that
    the next fetch goes out while the previous batch settles, up to twice the window in all.

    ``short_buffer``: a deeper buffer used while the bodies run short (under
    :data:`SHORT_TASK` on average): each fetch then brings a batch instead of one message
    per finished task, and a message held in it waits behind at most ``short_buffer``
    short bodies. Long bodies bring the window back to ``buffer``, so that they do not
    hold messages other workers could run.
    """

    def __init__(
        self,
        concurrency: int,
        buffer: int,
        leases: LeaseKeeper,
        *,
        short_buffer: int | None = None,
    ) -> None:
        self.concurrency = concurrency
        self.buffer = buffer
        self.short_buffer = short_buffer
        self.size = concurrency + buffer
        self.ran: float | None = None
        """How long bodies ran, a moving average (seconds; kept with ``short_buffer``)."""
        self.jobs: dict[str, Job] = {}
        """The held jobs by task id."""
        self.settling = 0
        """How many held jobs have finished running and are writing their outcome."""
        self.releases = 0
        """How many held jobs were released so far (settled or handed back)."""
        self._leases = leases
        self._room: asyncio.Event | None = None

    def __len__(self) -> int:
        return len(self.jobs)

    def open(self) -> None:
        """On the loop, before the worker consumes."""
        self._room = asyncio.Event()

    def credits(self) -> int:
        """How many messages to ask for now (0: wait for room).

        While some slot would sit idle (fewer unfinished messages held than slots), ask for
        the whole free window at once. Otherwise wait: the buffer covers the free slots,
        and the next ask comes when it runs dry, as one batch instead of one round trip per
        finished task. A buffer larger than the slots is refilled once half the window is
        free. Messages writing their outcome do not hold the next ask back, but all held
        messages stay within twice the window (a backend slow to settle slows fetching).
        """
        held = len(self.jobs)
        active = held - self.settling
        credits = min(self.size - active, 2 * self.size - held)
        if credits <= 0:
            return 0
        if active < self.concurrency:
            return credits
        return credits if credits >= max(1, self.size // 2) else 0

    def finished(self, job: Job, ran: float | None = None) -> None:
        """``job``'s code returned after ``ran`` seconds: its message now only waits for
        its outcome to be written (room for the next fetch)."""
        if not job.settling and self.jobs.get(job.envelope.id) is job:
            job.settling = True
            self.settling += 1
            if self.short_buffer is not None and ran is not None:
                self._adapt(ran, self.short_buffer)
            if self._room is not None:
                self._room.set()

    def _adapt(self, ran: float, short_buffer: int) -> None:
        """Count a body that ran ``ran`` seconds, and size the window for the average."""
        ran = min(ran, _LONGEST)
        average = ran if self.ran is None else self.ran + _SMOOTHING * (ran - self.ran)
        self.ran = average
        self.size = self.concurrency + (short_buffer if average < SHORT_TASK else self.buffer)

    def hold(self, job: Job) -> None:
        """``job`` was admitted."""
        self.jobs[job.envelope.id] = job

    def release(self, job: Job) -> None:
        """``job``'s message was settled or handed back: its lease needs no renewal, and
        there is room for another."""
        if self.jobs.get(job.envelope.id) is job:
            del self.jobs[job.envelope.id]
            if job.settling:
                job.settling = False
                self.settling -= 1
        self.releases += 1
        if not job.settled:  # a settled one was dropped then (Settler._lease_done)
            self._leases.drop(job.delivery)
        if self._room is not None:
            self._room.set()

    def wake(self) -> None:
        """Wake :meth:`room`'s waiter without a release: a held job changed stage (a
        cluster-wide limit sent it back to the scheduler)."""
        if self._room is not None:
            self._room.set()

    async def room(self) -> None:
        """Wait until a held message is released."""
        assert self._room is not None
        self._room.clear()
        await self._room.wait()


class Fetcher:
    """Fills one worker's window from the broker."""

    def __init__(
        self,
        kernel: Kernel,
        *,
        name: str,
        sched: Scheduler,
        window: Window,
        leases: LeaseKeeper,
        settler: Settler,
        rejects: Rejects,
        dispatch: Callable[[], None],
        clock: Clock,
        rng: random.Random,
        poll_interval: float,
        stall_timeout: float,
    ) -> None:
        self.kernel = kernel
        self.name = name
        self.sched = sched
        self.window = window
        self.leases = leases
        self.settler = settler
        self.rejects = rejects
        self.dispatch = dispatch
        self.clock = clock
        self.poll_interval = poll_interval
        self.stall_timeout = stall_timeout
        self._refused: dict[str, None] = {}
        self._limited: tuple[int, bool] = (-1, False)  # registry version, any task limited
        self._backoff = Backoff(rng)
        self._outage = Outage(f"worker {name}: fetch")
        self._unexpected = 0
        self.undeclared: list[str] = []
        """Queues the worker could not declare as it started: declared before the first
        fetch, retried with backoff until the broker takes them (:meth:`_declared`)."""
        self._declaring = Outage(f"worker {name}: declaring its queues")

    def _start_count(self) -> int:
        """How many messages a fetch may take for the broker to mark their records running:
        the free slots, when every message taken then starts at once (nothing buffered
        ahead of it, and no task a rate or cluster-wide limit could hold back); else 0."""
        if not self.kernel.backends.records_linked or len(self.sched):
            return 0
        registry = self.kernel.registry
        if self._limited[0] != registry.version:
            tasks = [registry[name] for name in registry]
            limited = any(t.options.rate_limit is not None or has_cluster_limit(t) for t in tasks)
            self._limited = (registry.version, limited)
        if self._limited[1]:
            return 0
        window = self.window
        return max(0, window.concurrency - (len(window) - window.settling))

    # -- the loop --------------------------------------------------------------------
    async def run(self, until_idle: bool = False) -> None:
        """Fetch, admit and dispatch until cancelled (or, ``until_idle``, until idle)."""
        self._backoff.reset()
        self._unexpected = 0
        loop = asyncio.get_running_loop()
        wait = 0.0 if until_idle else self.poll_interval
        while True:
            if self.undeclared and not await self._declared():
                continue
            credits = self.window.credits()
            releases = self.window.releases
            if credits > 0:
                since = loop.time()  # a lease starts no earlier than the fetch that took it
                got = await self._fetch(credits, wait)
                if got is None:  # failed (backed off) or stalled: logged, start over
                    continue
                await self._take(got, since)
                await self._take_lost(got.lost)
                if cancel_swallowed():  # admitted first, so shutdown hands the batch back
                    raise asyncio.CancelledError
                self.dispatch()
                if got and len(got) < credits:
                    # The broker had no more: the next fetch most often only waits. Let the
                    # jobs just started take their first step (their ``running`` record
                    # goes out), and a sync body handed to an idle thread start on it (a
                    # step later: ``BodyThreads._hand_over``), before it. A full batch goes
                    # straight on to the next fetch.
                    await asyncio.sleep(0)
                    await asyncio.sleep(0)
                if got or not until_idle:
                    continue
            elif not until_idle:
                await self.window.room()
                continue
            if await self._idle(releases):
                return

    async def _idle(self, releases: int) -> bool:
        """``until_idle``, once the broker had nothing more: True if nothing held can still
        run now; else wait for what may change that and return False.

        ``releases``: the window's count of released jobs when the last fetch began. A job
        released since may have made a message ready (a retry, a requeue) after the broker
        took that look (a look on another connection than the settle's can be answered
        before it): the broker is asked again rather than the worker called idle."""
        if self.window.releases != releases:
            return False
        if len(self.window) > len(self.sched):  # a job runs or writes its outcome
            await self.window.room()
            return False
        wait = self.sched.next_release()
        if wait is None:
            return True
        real = self.clock.real_timeout(wait)
        if real is None:  # a test clock: a rate-limited job waits for the test to move it
            return True
        await asyncio.sleep(real)
        self.dispatch()
        return False

    async def _declared(self) -> bool:
        """Declare :attr:`undeclared`; False after a failure (logged once, backed off).

        A server that refuses writes (Redis at its ``maxmemory``, a full disk) refuses
        the one a queue it has never seen needs: the worker waits for room here, as it
        waits for its fetches and leases, instead of exiting."""
        try:
            while self.undeclared:
                await self.kernel.declare(self.undeclared[0])
                del self.undeclared[0]
        except TRANSIENT as exc:
            self._declaring.failed(exc)
            await asyncio.sleep(self._backoff.delay())
            return False
        self._declaring.recovered()
        self._backoff.reset()
        return True

    async def _fetch(self, credits: int, timeout: float) -> FetchResult | None:
        """One fetch; None after a failure (logged, backed off) or a stall (logged)."""
        try:
            got = await self._fetch_bounded(credits, timeout)
        except TRANSIENT as exc:
            self._outage.failed(exc)
            await asyncio.sleep(self._backoff.delay())
            return None
        except Exception as exc:
            # Not a backend being down: a bug in a broker or its client. Try again a few
            # times; a fetch that keeps failing like this kills the stage.
            self._unexpected += 1
            if self._unexpected >= _FATAL_FETCH_ERRORS:
                raise
            log.warning(
                "worker %s: fetch failed unexpectedly (%s); retrying",
                self.name,
                describe(exc),
                exc_info=self._unexpected == 1,
            )
            await asyncio.sleep(self._backoff.delay())
            return None
        if got is not None:
            self._outage.recovered()
            self._backoff.reset()
            self._unexpected = 0
        return got

    async def _fetch_bounded(self, credits: int, timeout: float) -> FetchResult | None:
        """One fetch, bounded by ``stall_timeout``; None if it stalled (logged).

        A fetch asks the broker to wait at most ``poll_interval``; one that has not come
        back long after that is a consumer that stopped polling (a half-open connection, a
        wedged client): it is abandoned and the fetcher starts over.
        """
        stall = asyncio.timeout(self.stall_timeout)
        try:
            async with stall:
                broker, start = self.kernel.broker, self._start_count()
                if start:
                    return await broker.fetch_starting(
                        self.sched.fetch_order(), credits, timeout, start
                    )
                return await broker.fetch(self.sched.fetch_order(), credits, timeout)
        except TimeoutError:
            if not stall.expired():
                raise
            log.error(
                "worker %s: the consumer stopped polling (no answer from the broker in "
                "%.0fs); starting it again",
                self.name,
                self.stall_timeout,
            )
            return None

    # -- taking messages in ----------------------------------------------------------
    async def _take(self, got: list[Delivery], since: float) -> None:
        for delivery in got:
            self.leases.hold(delivery, since)
        at = 0
        try:
            while at < len(got):
                await self.admit(got[at])
                at += 1
        except asyncio.CancelledError:
            # Stopping while a backend is away: hand back what was not admitted yet, so
            # it does not wait for its lease (best effort; the lease is the fallback).
            for delivery in got[at:]:
                self.leases.drop(delivery)
                with contextlib.suppress(Exception):
                    await within(delivery.nack(requeue=True), 1.0)
            raise

    async def _take_lost(self, lost: Iterable[DeadLetter]) -> None:
        """Fail the records of messages the broker dead-lettered as ``worker_lost``."""
        for dead in lost:
            try:
                await self.rejects.lost(dead)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning(
                    "worker %s: could not record lost task %s (%s)",
                    self.name,
                    shown(dead.id),
                    describe(exc),
                )

    async def admit(self, delivery: Delivery) -> None:
        """Hold ``delivery`` for running, or settle it now; never raises but cancellation."""
        held = False
        try:
            held = await self._admit(delivery)
        except asyncio.CancelledError:
            raise  # stopping: the message is handed back or comes back after its lease
        except Exception as exc:
            await self.rejects.poisoned(delivery, exc)
        finally:
            if not held:
                self.leases.drop(delivery)

    async def _admit(self, delivery: Delivery) -> bool:
        try:
            # The decoder checks every field as the protocol says: nothing more to check.
            env = codec.decode_envelope(delivery.body)
        except Exception as exc:  # any decoder failure, including RecursionError
            await self.rejects.undecodable(delivery, exc)
            return False
        task = self.kernel.registry.get(env.task)
        if task is None:
            await self.rejects.not_registered(delivery, env, NotRegistered(env.task))
            return False
        job = Job(env, delivery, task)
        if env.id in self._refused:
            await self.settler.cancelled(job)
            return False
        if env.expires is not None and env.expires <= self.clock.time():
            await self.settler.expired(job)
            return False
        if delivery.delivery_count > 1:
            if self._held_here(env, delivery):
                return True
            if task.options.on_lost == "fail":
                await self.settler.worker_lost(job)
                return False
            log.warning(
                "%s[%s] delivered again (delivery %d of attempt %d): its lease ran out (the "
                "worker that held it was lost, or could not renew it)",
                env.task,
                env.id,
                delivery.delivery_count,
                env.attempt,
            )
        self.window.hold(job)
        self.sched.push(job)
        return True

    def _held_here(self, env: Envelope, delivery: Delivery) -> bool:
        """Whether ``delivery`` is a redelivery of a message held here, waiting for a slot
        or running: its renewals failed for a whole lease (the broker refused them, as a
        full Redis server does, or was away) and the broker delivered it again, to this
        worker. The held job then takes the new delivery, its lease and its settles:
        the body runs once, instead of a second time beside the first (or after it, for a
        task with no record), and one job per task id keeps the worker's account of its
        slots true."""
        held = self.window.jobs.get(env.id)
        if held is None or held.settling or held.settled or held.given_up:
            return False  # not here, finished, or given up (lease lost, or child died)
        if held.delivery.body != delivery.body:
            return False  # another message under its id (sent again meanwhile)
        self.leases.drop(held.delivery)
        held.delivery = delivery
        where = "while its body runs here" if held.ctx is not None else "while it waits here"
        log.warning(
            "%s[%s] delivered again (delivery %d of attempt %d) %s (its lease ran out: its "
            "renewals failed); it runs once, on the new delivery",
            env.task,
            env.id,
            delivery.delivery_count,
            env.attempt,
            where,
        )
        return True

    # -- taking messages back --------------------------------------------------------
    def refuse(self, task_id: str) -> None:
        """Settle ``task_id`` as cancelled if its message arrives (it was cancelled first)."""
        self._refused[task_id] = None
        while len(self._refused) > _REFUSED_MAX:
            self._refused.pop(next(iter(self._refused)))

    def withdraw(self, task_id: str) -> Job | None:
        """Take a buffered job out of the scheduler (it stays held until released)."""
        return self.sched.remove(task_id)

    async def hand_back(self) -> None:
        """Give every buffered job's message back to the broker, uncounted (stopping)."""
        for job in list(self.sched.drain()):
            self.window.release(job)
            await self.settler.requeue(job)
