"""The worker: fetcher -> scheduler -> executor, with a scripted shutdown.

This module is the hot path (fetch, admit, dispatch, execute, route errors). Starting,
the shutdown sequence and ``run_until_idle`` are in :mod:`.lifecycle`; local cancellation,
the control channel and lease renewal in :mod:`.control`; outcomes in :mod:`.settle`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import random
import socket
import threading
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .. import codec
from ..brokers.base import BrokerAdmin, Delivery
from ..clock import Clock
from ..context import TaskContext
from ..errors import NotRegistered, PayloadError, Reject, Retry, TaskflowError, TaskTimeout
from ..middleware import chain_execute
from . import lifecycle
from .control import cancel_all, cancel_swallowed
from .events import EventBus, Subscription
from .executor import run_async, run_sync
from .retry import backoff_delay
from .scheduler import Job, Scheduler
from .settle import Settler
from .watchdog import Watchdog

if TYPE_CHECKING:
    from ..app import App

__all__ = ["Worker"]

log = logging.getLogger("taskflow.worker")


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
        """Start and block until stopped (SIGTERM/SIGINT handling is the caller's)."""
        self.start()
        self._stopped.wait()

    def stop(self, timeout: float = 30.0) -> None:
        """Graceful stop; idempotent and safe from any thread, any number of times.

        The sequence: (1) stop fetching; (2) hand every received but unstarted message
        back to the broker (``nack(requeue=True)``, no attempt spent); (3) let running
        tasks finish for up to ``timeout`` seconds; (4) cancel what still runs and hand
        it back too, so an at-least-once broker redelivers it; (5) close the thread pool
        and subscriptions. Returns when the worker has stopped (or at once when called
        from the worker's own loop).
        """
        lifecycle.request_stop(self, timeout, hard=False)

    def stop_now(self) -> None:
        """Hard stop: cancel running work now (it is handed back for redelivery)."""
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
        backoff = 0.05
        while True:
            credits = self._credits()
            if credits <= 0:
                self._room.clear()
                await self._room.wait()
                continue
            got = await self._fetch_once(credits)
            if got is None:  # failed or stalled: back off, then ask again
                await asyncio.sleep(backoff * (0.5 + self.rng.random()))
                backoff = min(backoff * 2, 5.0)
                continue
            backoff = 0.05
            for delivery in got:
                await self._admit(delivery)
            await self._record_lost()
            if cancel_swallowed():  # admitted first, so shutdown hands the batch back
                raise asyncio.CancelledError
            self._dispatch()

    async def _fetch_once(self, credits: int) -> list[Delivery] | None:
        """One fetch, bounded by ``stall_timeout``; None if it failed (logged)."""
        stall = asyncio.timeout(self.stall_timeout)
        try:
            async with stall:
                return await self.app.broker.fetch(
                    self._sched.fetch_order(), credits, self.poll_interval
                )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if isinstance(exc, TimeoutError) and stall.expired():
                log.error(
                    "worker %s: the consumer stopped polling (no answer from the broker in "
                    "%.0fs); starting it again",
                    self.name,
                    self.stall_timeout,
                )
            else:
                log.warning("worker %s: fetch failed (%s); retrying", self.name, exc)
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

    async def _record_lost(self) -> None:
        for dead in self.app.broker.take_lost():
            try:
                await self.settle.lost(dead)
            except Exception:
                log.exception("worker %s: could not record lost task %s", self.name, dead.id)

    async def _admit(self, delivery: Delivery) -> None:
        try:
            env = codec.decode_envelope(delivery.body)
        except PayloadError as exc:
            await self.settle.reject_undecodable(delivery, exc)
            return
        task = self.app.registry.get(env.task)
        if task is None:
            await self.settle.reject_unknown(delivery, env, NotRegistered(env.task))
            return
        job = Job(env, delivery, task)
        if env.id in self._cancelled:
            await self.settle.cancelled(job, started=False)
            return
        if env.expires is not None and env.expires <= self.clock.time():
            await self.settle.expired(job)
            return
        self._held[env.id] = job
        self._sched.push(job)

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
        self._held.pop(job.envelope.id, None)
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
        except Exception:
            log.exception("worker %s: internal error settling %s", self.name, job.envelope.id)
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
            await self._on_error(job, exc, float(timeout or 0.0))
        elif job.cancel_reason == "cancelled":
            await self.settle.cancelled(job, started=True)
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
        )
        job.ctx = ctx
        t0 = self.clock.monotonic()
        try:
            args, kwargs = task.schema.decode_args(env.args, env.kwargs)
        except PayloadError as exc:
            await self.settle.failed(job, exc, 0.0, reason="payload")
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
            await self._on_error(job, error, self.clock.monotonic() - t0)
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
        return await run_sync(self._pool, task.fn, args, kwargs, ctx)

    async def _on_error(self, job: Job, exc: BaseException, duration: float) -> None:
        if isinstance(exc, Reject):
            await self.settle.failed(job, exc, duration, reason="rejected")
            return
        opts = job.task.options
        env = job.envelope
        can_retry = job.attempt <= env.max_retries
        if isinstance(exc, Retry):
            cause: BaseException = exc.exc or exc
            if can_retry:
                delay = exc.countdown if exc.countdown is not None else self._backoff(job)
                await self.settle.retry(job, cause, delay, duration)
                return
            await self.settle.failed(job, cause, duration)
            return
        retriable = isinstance(exc, (*opts.retry_on, TaskTimeout))
        if can_retry and retriable and not isinstance(exc, PayloadError):
            await self.settle.retry(job, exc, self._backoff(job), duration)
            return
        await self.settle.failed(job, exc, duration)

    def _backoff(self, job: Job) -> float:
        opts = job.task.options
        return backoff_delay(
            job.attempt, opts.retry_backoff, opts.retry_backoff_max, opts.retry_jitter, self.rng
        )
