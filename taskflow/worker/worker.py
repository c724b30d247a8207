"""The worker: fetcher -> scheduler -> executor, with a scripted shutdown.

This module is the hot path (fetch, dispatch, execute). Admitting a fetched message is in
:mod:`.admit` (messages that will never run in :mod:`.rejects`); starting, the shutdown
sequence and ``run_until_idle`` in :mod:`.lifecycle`; local cancellation and the control
channel in :mod:`.control`; lease renewal in :mod:`.leases`; outcomes in :mod:`.settle`,
and whether a failure is retried in :mod:`.retry`. Backends that are away are waited out
as :mod:`.resilience` describes.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import random
import socket
import threading
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .._waiters import within
from ..brokers.base import BrokerAdmin, Delivery
from ..clock import Clock
from ..context import TaskContext
from ..errors import (
    Reject,
    Retry,
    TaskflowError,
    TaskTimeout,
    WorkerCrashed,
)
from ..middleware import chain_execute
from . import lifecycle
from .admit import admit, payload_error, record_lost
from .control import cancel_all, cancel_swallowed
from .events import EventBus, Subscription
from .executor import run_async, run_sync
from .leases import LeaseKeeper
from .resilience import TRANSIENT, Backoff, Outage, describe
from .retry import route_failure
from .scheduler import Job, Scheduler
from .settle import Settler
from .watchdog import Watchdog

if TYPE_CHECKING:
    from ..app import App

__all__ = ["Worker"]

log = logging.getLogger("taskflow.worker")

# A fetch that fails this many times in a row with an error that is not a backend being
# down (a bug) kills the fetch stage, which stops the worker (Worker.fatal).
_FATAL_FETCH_ERRORS = 5


class Worker:
    """Runs an app's tasks from ``queues`` with up to ``concurrency`` at once.

    ``stall_timeout``: a fetch not answered within it is abandoned and started again
    (default ``max(10, 5 * poll_interval)`` seconds).
    ``prefetch_buffer``: messages held beyond free slots (default ``concurrency // 2``,
    at least 1); ``poll_interval``: the longest a fetch blocks before re-checking state.
    """

    def __init__(
        self,
        app: App,
        queues: Sequence[str] | None = None,
        concurrency: int = 8,
        *,
        prefetch_buffer: int | None = None,
        name: str | None = None,
        poll_interval: float = 1.0,
        stall_timeout: float | None = None,
        clock: Clock | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise ValueError(f"worker concurrency must be a positive integer, got {concurrency!r}")
        if prefetch_buffer is not None and (
            not isinstance(prefetch_buffer, int) or prefetch_buffer < 0
        ):
            raise ValueError("worker prefetch_buffer must be a non-negative integer")
        self.app = app
        self.queues = list(queues or [app.default_queue])
        if not self.queues or not all(isinstance(q, str) and q for q in self.queues):
            raise ValueError(f"worker queues must be non-empty names, got {queues!r}")
        self.concurrency = concurrency
        self.prefetch_buffer = (
            max(1, concurrency // 2) if prefetch_buffer is None else prefetch_buffer
        )
        self.name = name or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.poll_interval = poll_interval
        # A fetch asks the broker to wait at most poll_interval; one that has not come back
        # long after that is a consumer that stopped polling (a half-open connection, a
        # wedged client): it is abandoned and the fetcher starts over.
        self.stall_timeout = stall_timeout or max(10.0, 5 * poll_interval)
        self.clock = clock or app.clock
        self.rng = rng or random.Random()
        self.bus = EventBus()
        self.settle = Settler(self)
        self.leases = LeaseKeeper(self.name)
        self.fatal: BaseException | None = None
        """The error that killed a stage of this worker (None while it runs or after a
        clean stop). A worker whose stage died stops itself; ``run()`` then raises."""
        self._state_lock = threading.Lock()
        self._state = "new"  # new -> running -> stopping -> stopped
        self._stopped = threading.Event()
        self._grace = 30.0
        self._hard = False
        self._stop_event: asyncio.Event | None = None
        self._escalate: asyncio.Event | None = None
        self._room: asyncio.Event | None = None
        self._main: concurrent.futures.Future[None] | None = None
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._sched = Scheduler(self.queues, app.queue_weights, self.clock, concurrency)
        self._running: dict[str, Job] = {}
        self._held: dict[str, Job] = {}
        self._cancelled: dict[str, None] = {}
        self._orphans: set[asyncio.Task[None]] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._exec = chain_execute(app.middleware, self._invoke)
        self._watchdog = Watchdog(concurrency)
        self.counts = dict.fromkeys(
            (
                "processed",
                "succeeded",
                "failed",
                "retried",
                "cancelled",
                "expired",
                "dead_lettered",
                "requeued",
            ),
            0,
        )

    def __repr__(self) -> str:
        return f"<Worker {self.name} queues={self.queues} concurrency={self.concurrency}>"

    # -- public, thread-safe ---------------------------------------------------------
    def start(self) -> Worker:
        """Start in the background on the app's loop; returns once it is consuming."""
        lifecycle.start(self)
        return self

    def __enter__(self) -> Worker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def run(self) -> None:
        """Start and block until stopped (SIGTERM/SIGINT handling is the caller's).

        Raises :class:`~taskflow.errors.WorkerCrashed` (the stage's error as its cause)
        if the worker stopped because one of its stages died, so that the process can
        exit non-zero and be restarted by its supervisor.
        """
        self.start()
        self._stopped.wait()
        if self.fatal is not None:
            raise WorkerCrashed(
                f"worker {self.name} stopped: a stage died ({describe(self.fatal)})"
            ) from self.fatal

    def stop(self, timeout: float = 30.0) -> None:
        """Graceful stop; idempotent and safe from any thread, any number of times.

        The sequence: (1) stop fetching; (2) hand every received but unstarted message
        back to the broker (``nack(requeue=True)``, no delivery counted); (3) let running
        tasks finish for up to ``timeout`` seconds; (4) cancel what still runs and hand
        it back too, so an at-least-once broker redelivers it; (5) close the thread pool
        and subscriptions. Returns when the worker has stopped (or at once when called
        from the worker's own loop).

        A message goes back to the broker only once its task's code can no longer run.
        A coroutine is cancelled, and a sync body gets an asynchronous exception in its
        thread; one that does not unwind within half a second (blocked in C code or a
        system call, which Python cannot interrupt) is not handed back: the worker stops
        without it, keeps renewing its lease in the background while this process lives,
        and hands it back when the body returns. If the process ends first (the CLI exits
        at once after a hard stop), the lease runs out and the broker delivers it again.
        """
        lifecycle.request_stop(self, timeout, hard=False)

    def stop_now(self) -> None:
        """Hard stop: cancel running work now and return within a few seconds.

        Cancelled tasks are handed back for redelivery once their code can no longer run
        (see :meth:`stop` for a sync body blocked in C code).
        """
        lifecycle.request_stop(self, 0.0, hard=True)

    def subscribe(self, buffer: int = 100, drop: str = "newest") -> Subscription:
        """Terminal events (``kind == "finish"``) of this worker's tasks."""
        return self.bus.subscribe(buffer, drop)

    def cancel(self, task_id: str) -> bool:
        """Cancel a queued or running task (same as ``AsyncResult.cancel``)."""
        return bool(self.app._call(self.app._cancel(task_id)))

    def cancel_all(self) -> int:
        """Cancel everything this worker holds (running and prefetched)."""
        return self.app._call(cancel_all(self))

    def stats(self) -> dict[str, Any]:
        """Counters, what runs now and each queue's depth (where the broker tells)."""
        return self.app._call(self._stats())

    async def _stats(self) -> dict[str, Any]:
        depth: dict[str, Any] = {}
        broker = self.app.broker
        if isinstance(broker, BrokerAdmin):
            for q in self.queues:
                depth[q] = await broker.depth(q)
        return {
            **self.counts,
            "running": len(self._running),
            "buffered": len(self._held) - len(self._running),
            "concurrency": self.concurrency,
            "state": self._state,
            "queues": depth,
            "name": self.name,
        }

    def run_until_idle(self) -> int:
        """Test seam: process everything due now, then return how many tasks ran.

        Does not wait for delayed messages; with a FakeClock, advance it and call again.
        """
        with self._state_lock:
            if self._state != "new":
                raise TaskflowError("run_until_idle() is for a worker that was not started")
        before = self.counts["processed"]
        self.app._call(lifecycle.drain(self))
        return self.counts["processed"] - before

    # -- fetcher ---------------------------------------------------------------------
    async def _fetch_loop(self) -> None:
        assert self._room is not None
        loop = asyncio.get_running_loop()
        backoff = Backoff(self.rng)
        outage = Outage(f"worker {self.name}: fetch")
        unexpected = 0
        while True:
            credits = self._credits()
            if credits <= 0:
                self._room.clear()
                await self._room.wait()
                continue
            since = loop.time()  # a lease starts no earlier than the fetch that took it
            try:
                got = await self._fetch_once(credits)
            except TRANSIENT as exc:
                outage.failed(exc)
                await asyncio.sleep(backoff.delay())
                continue
            except Exception as exc:
                # Not a backend being down: a bug in a broker or its client. Try again a
                # few times; a fetch that keeps failing like this kills the stage.
                unexpected += 1
                if unexpected >= _FATAL_FETCH_ERRORS:
                    raise
                log.warning(
                    "worker %s: fetch failed unexpectedly (%s); retrying",
                    self.name,
                    describe(exc),
                    exc_info=unexpected == 1,
                )
                await asyncio.sleep(backoff.delay())
                continue
            if got is None:  # stalled (logged): start over at once
                continue
            outage.recovered()
            backoff.reset()
            unexpected = 0
            for delivery in got:
                self.leases.hold(delivery, since)
            await self._admit_batch(got)
            await record_lost(self)
            if cancel_swallowed():  # admitted first, so shutdown hands the batch back
                raise asyncio.CancelledError
            self._dispatch()

    async def _admit_batch(self, got: list[Delivery]) -> None:
        pending = list(got)
        try:
            while pending:
                await admit(self, pending[0])
                pending.pop(0)
        except asyncio.CancelledError:
            # Stopping while a backend is away: hand back what was not admitted yet, so
            # it does not wait for its lease (best effort; the lease is the fallback).
            for delivery in pending:
                self.leases.drop(delivery)
                with contextlib.suppress(Exception):
                    await within(delivery.nack(requeue=True), 1.0)
            raise

    async def _fetch_once(self, credits: int) -> list[Delivery] | None:
        """One fetch, bounded by ``stall_timeout``; None if it stalled (logged)."""
        stall = asyncio.timeout(self.stall_timeout)
        try:
            async with stall:
                return await self.app.broker.fetch(
                    self._sched.fetch_order(), credits, self.poll_interval
                )
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

    def _credits(self) -> int:
        """How many messages to ask for now (0: wait for room).

        While some slot would sit idle (fewer messages held than slots), ask for the whole
        free window at once. Otherwise wait: the buffer covers the free slots, and the next
        ask comes when it runs dry, as one batch instead of one round trip per finished
        task. A buffer larger than the slots is refilled once half the window is free.
        """
        held = len(self._held)
        window = self.concurrency + self.prefetch_buffer
        credits = window - held
        if held < self.concurrency:
            return credits
        return credits if credits >= max(1, window // 2) else 0

    def _dispatch(self) -> None:
        while len(self._running) < self.concurrency:
            job = self._sched.pop()
            if job is None:
                break
            self._running[job.envelope.id] = job
            job.handle = asyncio.get_running_loop().create_task(self._execute(job))
        wait = self._sched.next_release()
        if wait is not None and self._timer is None and len(self._running) < self.concurrency:
            self._timer = asyncio.get_running_loop().call_later(wait, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._dispatch()

    def _free_slot(self, job: Job) -> None:
        if self._running.pop(job.envelope.id, None) is not None and (
            self._state == "running" or self._stop_event is None
        ):
            self._dispatch()

    def _release(self, job: Job) -> None:
        self._running.pop(job.envelope.id, None)
        if self._held.get(job.envelope.id) is job:
            del self._held[job.envelope.id]
        self.leases.drop(job.delivery)
        if self._room is not None:
            self._room.set()
        if self._state == "running" or self._stop_event is None:
            self._dispatch()

    # -- executor --------------------------------------------------------------------
    async def _execute(self, job: Job) -> None:
        try:
            await self._attempt(job)
        except asyncio.CancelledError:
            await self._after_cancel(job)
        except Exception as exc:  # settling kept failing (outages are waited out)
            self.settle.abandon(job, exc)
        finally:
            self.counts["processed"] += 1
            self._release(job)

    async def _after_cancel(self, job: Job) -> None:
        task = asyncio.current_task()
        if task is not None:
            task.uncancel()  # handled here: later awaits in this task must not see it
        if job.cancel_reason == "timeout":
            timeout = job.envelope.timeout
            exc = TaskTimeout(
                f"{job.envelope.task}[{job.envelope.id}] exceeded its {timeout}s timeout"
            )
            await route_failure(self, job, exc, float(timeout or 0.0))
        elif job.cancel_reason == "cancelled":
            await self.settle.cancelled(job, started=True)
        elif job.body is not None and not job.body.done():
            # A sync body still runs in its thread: its message must not go back yet.
            lifecycle.adopt_orphan(self, job)
        else:
            await self.settle.requeue(job, started=True)

    async def _attempt(self, job: Job) -> None:
        env, task = job.envelope, job.task
        if not await self.settle.started(job):
            return
        ctx = TaskContext(
            id=env.id,
            name=env.task,
            attempt=job.attempt,
            retries=env.max_retries,
            queue=env.queue,
            priority=env.priority,
            headers=env.headers,
            deadline=None if env.timeout is None else self.clock.time() + env.timeout,
            delivery=max(1, job.delivery.delivery_count),
        )
        job.ctx = ctx
        t0 = self.clock.monotonic()
        try:
            args, kwargs = task.schema.decode_args(env.args, env.kwargs)
        except Exception as exc:
            await self.settle.failed(job, payload_error(env.task, exc), 0.0, reason="payload")
            return
        ctx._call = (args, kwargs, job)
        if job.cancel_reason is not None:
            raise asyncio.CancelledError
        error: BaseException | None = None
        job.in_user_code = True
        try:
            value = await self._exec(ctx)
        except (Retry, Reject, Exception) as exc:
            error = exc
        finally:
            job.in_user_code = False
            # The slot is for running task code: free it now, so the next task starts
            # while this one's outcome is written (its message still counts against the
            # prefetch window until it is acked).
            self._free_slot(job)
        if error is not None:
            await route_failure(self, job, error, self.clock.monotonic() - t0)
            return
        await self.settle.succeeded(job, value, self.clock.monotonic() - t0)

    async def _invoke(self, ctx: TaskContext) -> Any:
        args, kwargs, job = ctx._call
        task = job.task
        if task.options.bind:
            args = (ctx, *args)
        if job.envelope.timeout is not None:
            self._watchdog.watch(job, job.envelope.timeout)
        if task.is_async:
            return await run_async(task.fn, args, kwargs, ctx)
        assert self._pool is not None
        return await run_sync(self._pool, task.fn, args, kwargs, ctx, on_submit=job.set_body)
