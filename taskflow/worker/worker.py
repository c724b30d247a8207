"""The worker: a :class:`~taskflow.kernel.Service` that composes its stages.

A message goes through :class:`~.fetcher.Fetcher` (fetch into the prefetch window, admit),
:class:`~.scheduler.Scheduler` (priority, fair share, rate limits),
:class:`~.executor.Executor` (a slot, the middleware, the task's code),
:func:`~.policy.decide` (for a failed attempt: retry or fail) and
:class:`~.settle.Settler` (record, continuations, ack, count), which announces the outcome
through :class:`~.announce.Announcer`. :class:`~.control.Control` runs beside them
(cancellation, the control channel, lease renewal). Backends that are away are waited out
as :mod:`.resilience` describes.

Starting and stopping are the :class:`~taskflow.kernel.Service` lifecycle; the stop
sequence is :meth:`Worker._shutdown`, with the reason for its order.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import math
import os
import random
import socket
import uuid
from collections.abc import Sequence
from typing import Any

from ..brokers.base import BrokerAdmin
from ..clock import Clock
from ..eventbus import EventBus, Subscription
from ..kernel import Kernel, Service
from ..kernel.service import RUNNING
from ..options import check_name, check_queue, name_list
from .announce import Announcer
from .control import Control
from .executor import Executor
from .fetcher import Fetcher, Window
from .heartbeat import DEFAULT_INTERVAL, Heartbeat, checked_interval
from .leases import LeaseKeeper
from .procpool import ProcessPool, check_pool_options, unenforced_time_limits
from .rejects import Rejects
from .resilience import TRANSIENT, describe
from .scheduler import Scheduler
from .settle import Settler
from .stalls import StallWatch
from .stats import WorkerStats

__all__ = ["Worker"]

log = logging.getLogger("taskflow.worker")


class Worker(Service):
    """Runs an app's tasks from ``queues`` with up to ``concurrency`` at once.

    Built on the app's :class:`~taskflow.kernel.Kernel` (``app.worker()`` passes it).

    ``stall_timeout``: a fetch not answered within it is abandoned and started again
    (default ``max(10, 5 * poll_interval)`` seconds).
    ``prefetch_buffer``: messages held beyond free slots (default ``concurrency // 2``,
    at least 1; ``2 * concurrency`` on SQLite, see ``Capabilities.fetch_buffer``; with no
    ``prefetch_buffer`` given, ``2 * concurrency`` while the bodies run under 20 ms on
    average, on either pool, or the broker's ``Capabilities.short_fetch_buffer`` if more
    (64 on NATS): ``window.short_buffer``);
    ``poll_interval``: the longest a fetch blocks before re-checking state.
    ``heartbeat``: seconds between the writes of this worker's entry to the result store
    (:mod:`.heartbeat`); ``heartbeat_retention``: how long an entry outlives its last write
    (default ``max(10 * heartbeat, 60)``).
    ``pool``: ``"threads"`` (default) or ``"processes"``: sync bodies in ``concurrency``
    child processes (:mod:`.procpool`), which import the app from ``app_path``
    (``module:attr``; default: the module-level global that holds the app), are recycled
    after ``max_tasks_per_child`` tasks or once above ``max_memory_per_child`` MB, and
    enforce the tasks' ``time_limit``.
    """

    kind = "worker"

    def __init__(
        self,
        kernel: Kernel,
        queues: Sequence[str] | None = None,
        concurrency: int = 8,
        *,
        prefetch_buffer: int | None = None,
        name: str | None = None,
        poll_interval: float = 1.0,
        stall_timeout: float | None = None,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        heartbeat: float = DEFAULT_INTERVAL,
        heartbeat_retention: float | None = None,
        pool: str = "threads",
        max_tasks_per_child: int | None = None,
        max_memory_per_child: float | None = None,
        app_path: str | None = None,
    ) -> None:
        queues = _checked(queues or [kernel.settings.default_queue], concurrency, prefetch_buffer)
        check_pool_options(pool, max_tasks_per_child, max_memory_per_child)
        interval, retention = checked_interval(heartbeat, heartbeat_retention)
        stall_timeout = _checked_waits(poll_interval, stall_timeout)
        if name is not None:  # it names the worker in log lines, heartbeats and leases
            check_name(name, "worker name")
        super().__init__(
            name or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}",
            kernel.loop,
            kernel.services,
        )
        self.kernel = kernel
        self.queues = queues
        self.concurrency = concurrency
        self.prefetch_buffer = (
            _default_buffer(concurrency, kernel.broker.capabilities.fetch_buffer)
            if prefetch_buffer is None
            else prefetch_buffer
        )
        self.poll_interval = poll_interval
        self.stall_timeout = stall_timeout
        self.clock = clock or kernel.clock
        self.rng = rng or random.Random()
        self.bus = EventBus()
        """This worker's finish events (:meth:`subscribe`)."""
        self.counts = WorkerStats()
        self.leases = LeaseKeeper(self.name)
        # While the bodies run short, a deeper buffer makes each fetch a batch: a fetch per
        # finished task or two would cost the loop more than the bodies (docs/design.md).
        # None where the default is that deep already (SQLite): nothing to adapt then.
        deeper = max(2 * concurrency, kernel.broker.capabilities.short_fetch_buffer)
        short_buffer = deeper if prefetch_buffer is None and deeper > self.prefetch_buffer else None
        self.window = Window(
            concurrency, self.prefetch_buffer, self.leases, short_buffer=short_buffer
        )
        sched = Scheduler(self.queues, kernel.settings.queue_weights, self.clock, concurrency)
        self.announcer = Announcer(kernel, self.bus, self.clock)
        self.settler = Settler(
            kernel,
            self.counts,
            self.announcer,
            name=self.name,
            clock=self.clock,
            rng=self.rng,
            leases=self.leases,
        )
        self.executor = Executor(
            kernel,
            sched=sched,
            window=self.window,
            settler=self.settler,
            stats=self.counts,
            clock=self.clock,
            rng=self.rng,
            concurrency=concurrency,
            procs=None
            if pool == "threads"
            else ProcessPool(
                kernel,
                concurrency,
                app_path=app_path,
                max_tasks_per_child=max_tasks_per_child,
                max_memory_per_child=max_memory_per_child,
            ),
        )
        rejects = Rejects(
            kernel, self.settler, self.counts, name=self.name, clock=self.clock, rng=self.rng
        )
        self.fetcher = Fetcher(
            kernel,
            name=self.name,
            sched=sched,
            window=self.window,
            leases=self.leases,
            settler=self.settler,
            rejects=rejects,
            dispatch=self.executor.dispatch,
            clock=self.clock,
            rng=self.rng,
            poll_interval=poll_interval,
            stall_timeout=self.stall_timeout,
        )
        self.control = Control(
            kernel,
            name=self.name,
            fetcher=self.fetcher,
            executor=self.executor,
            settler=self.settler,
            leases=self.leases,
            rng=self.rng,
            poll_interval=poll_interval,
        )
        self.heartbeat = Heartbeat(
            kernel.results,
            worker_id=self.name,
            queues=self.queues,
            concurrency=concurrency,
            pool=pool,
            running=self._running_tasks,
            counters=self.counts.as_dict,
            interval=interval,
            retention=retention,
            clock=self.clock,
        )
        """This worker's entry in the result store (``app.admin.workers()`` reads it)."""
        self.stalls = StallWatch(self.name, self._in_their_code, counted=self._count_stall)
        """Warns when the event loop stops turning (:mod:`.stalls`)."""

    def _count_stall(self) -> None:
        self.counts.loop_stalls += 1  # from the watching thread, the only one that writes it

    def _in_their_code(self) -> list[str]:
        """``name[id] (kind)`` of every task in its own code now (for :class:`StallWatch`,
        from its thread: ``list()`` copies the table in one step of the interpreter)."""
        in_child = self.executor.procs is not None
        found = []
        for tid, job in list(self.executor.running.items()):
            if job.in_user_code:
                kind = "async def" if job.task.is_async else "def"
                if in_child and not job.task.is_async:
                    kind += ", in a child process"
                found.append(f"{job.envelope.task}[{tid}] ({kind})")
        return found

    def _running_tasks(self) -> list[tuple[str, str]]:
        """``(task id, task name)`` of every task running now (for the heartbeat)."""
        return [(tid, job.envelope.task) for tid, job in self.executor.running.items()]

    def __repr__(self) -> str:
        return f"<Worker {self.name} queues={self.queues} concurrency={self.concurrency}>"

    # -- public, thread-safe ---------------------------------------------------------
    def stop(self, timeout: float = 30.0) -> None:
        """Graceful stop; idempotent and safe from any thread, any number of times.

        The sequence (:meth:`_shutdown`): (1) stop fetching; (2) hand every received but
        unstarted message back to the broker (``nack(requeue=True)``, no delivery
        counted); (3) let running tasks finish for up to ``timeout`` seconds; (4) cancel
        what still runs and hand it back too, so an at-least-once broker redelivers it;
        (5) close the thread pool and subscriptions. Returns when the worker has stopped
        (or at once when called from the worker's own loop).

        A message goes back to the broker only once its task's code can no longer run.
        A coroutine is cancelled, and a sync body gets an asynchronous exception in its
        thread; one that does not unwind within half a second (blocked in C code or a
        system call, which Python cannot interrupt) is not handed back: the worker stops
        without it, keeps renewing its lease in the background while this process lives,
        and hands it back when the body returns. If the process ends first (the CLI exits
        at once after a hard stop), the lease runs out and the broker delivers it again.
        """
        super().stop(timeout)

    def stop_now(self) -> None:
        """Hard stop: cancel running work now and return within a few seconds.

        Cancelled tasks are handed back for redelivery once their code can no longer run
        (see :meth:`stop` for a sync body blocked in C code).
        """
        super().stop_now()

    def subscribe(self, buffer: int = 100, drop: str = "newest") -> Subscription:
        """Terminal events (``kind == "finish"``) of this worker's tasks."""
        return self.bus.subscribe(buffer, drop)

    def cancel(self, task_id: str) -> bool:
        """Cancel a queued or running task (same as ``AsyncResult.cancel``)."""
        return bool(self.kernel.call(self.kernel.cancel(task_id)))

    def cancel_all(self) -> int:
        """Cancel everything this worker holds (running and prefetched)."""
        return self.kernel.call(self.control.cancel_all())

    def stats(self) -> dict[str, Any]:
        """Counters, what runs now and each queue's depth (where the broker tells)."""
        return self.kernel.call(self._stats())

    async def _stats(self) -> dict[str, Any]:
        depth: dict[str, Any] = {}
        broker = self.kernel.broker
        if isinstance(broker, BrokerAdmin):
            for q in self.queues:
                depth[q] = await broker.depth(q)
        running = len(self.executor.running)
        return {
            **self.counts.as_dict(),
            "running": running,
            "buffered": len(self.window) - running,
            "concurrency": self.concurrency,
            "state": self.state,
            "queues": depth,
            "name": self.name,
        }

    def run_until_idle(self) -> int:
        """Test seam: process everything due now, then return how many tasks ran.

        The same loop as a started worker's, in a mode that does not wait for messages:
        it returns once the broker has nothing due and nothing held can run. Does not
        wait for delayed messages; with a FakeClock, advance it and call again. Leaves the
        worker as if it had never been started.
        """
        self._check_new("run_until_idle()")
        before = self.counts.processed
        self.kernel.call(self._drain())
        return self.counts.processed - before

    async def _drain(self) -> None:
        self._arm()
        await self._serve(None, until_idle=True)

    # -- on the loop -----------------------------------------------------------------
    async def _serve(
        self, ready: concurrent.futures.Future[None] | None, until_idle: bool = False
    ) -> None:
        """Consume until stopped (``until_idle``: until idle), then stop in order."""
        try:
            await self._open(until_idle)
            if not until_idle:
                await self.heartbeat.beat()  # listed as soon as it is started
        except BaseException:
            await self._close(final=not until_idle)
            raise
        stages = self._start_stages(until_idle)
        if ready is not None:
            ready.set_result(None)
            log.info(
                "worker %s consuming %s (concurrency %d, event loop %s)",
                self.name,
                ",".join(self.queues),
                self.concurrency,
                self.kernel.loop.kind,
            )
            self._warn_unenforced_limits()
        try:
            if until_idle:
                await stages[0]  # the fetcher returns once idle
            else:
                await self._stop_requested()
        finally:
            # run_until_idle hands back at once what it could not run; it has no grace.
            grace = 0.0 if until_idle else (self.grace or 0.0)
            await self._shutdown(stages, grace, final=not until_idle)

    def _warn_unenforced_limits(self) -> None:
        """Say which tasks' ``time_limit`` this worker cannot enforce: their bodies would
        run past it with nothing said."""
        unenforced = unenforced_time_limits(
            self.kernel, self.queues, processes=self.executor.procs is not None
        )
        if unenforced:
            log.warning(
                "worker %s: the time_limit of %s is not enforced here: only a def body on "
                "the process pool (--pool processes) is killed at its limit; their "
                "timeout, if declared, still applies",
                self.name,
                ", ".join(unenforced),
            )

    async def _open(self, until_idle: bool) -> None:
        await self.kernel.connect()
        for i, q in enumerate(self.queues):
            try:
                await self.kernel.declare(q)
            except TRANSIENT as exc:
                if until_idle:
                    raise  # run_until_idle returns; it does not wait for the broker
                # A queue the server has never seen needs a write, which a full server
                # refuses: start all the same, and declare before the first fetch.
                log.warning(
                    "worker %s: cannot declare queue %r yet (%s); it starts and waits "
                    "for the broker to take it before fetching",
                    self.name,
                    q,
                    describe(exc),
                )
                self.fetcher.undeclared = list(self.queues[i:])
                break
        self.window.open()
        self.executor.open()
        if self.executor.procs is not None:
            await self.executor.procs.open()

    def _start_stages(self, until_idle: bool) -> list[asyncio.Task[None]]:
        """The fetcher first, then what runs beside it; a stage that dies stops the worker."""
        stages = [asyncio.create_task(self.fetcher.run(until_idle), name="taskflow-fetch")]
        for name, stage in self.control.stages():
            stages.append(asyncio.create_task(stage(), name=f"taskflow-{name}"))
        if not until_idle:
            stages.append(asyncio.create_task(self.heartbeat.run(), name="taskflow-heartbeat"))
            stages.append(asyncio.create_task(self.stalls.run(), name="taskflow-stall-watch"))
        for task in stages:
            task.add_done_callback(self._stage_ended)
        return stages

    def _stage_ended(self, task: asyncio.Task[None]) -> None:
        """A stage ends only when the worker stops; one that died stops the worker."""
        if task.cancelled():
            return
        exc = task.exception()
        if exc is None and self.state != RUNNING:
            return  # the fetcher of run_until_idle, done
        fatal = exc or RuntimeError(f"the {task.get_name()} stage returned")
        if self._die(fatal):
            log.critical(
                "worker %s: its %s stage died (%s); stopping the worker",
                self.name,
                task.get_name().removeprefix("taskflow-"),
                describe(fatal),
                exc_info=exc,
            )

    def _wake(self) -> None:
        self.executor.accepting = False  # no new job starts once a stop was asked for
        super()._wake()

    async def _shutdown(self, stages: list[asyncio.Task[None]], grace: float, final: bool) -> None:
        """The stop sequence. Its order, and why:

        1. Stop fetching and start no new job: nothing new comes in while the rest drains.
        2. Hand every buffered (received, not started) message back to the broker, uncounted:
           another worker can start it now instead of after this worker's grace period.
        3. Let started jobs -- running, or writing their outcome -- finish within ``grace``
           seconds, unless :meth:`stop_now` escalates.
        4. Cancel what still runs. A cancelled job hands its message back once its code can
           no longer run; a sync body stuck in C code is adopted instead
           (:meth:`~.executor.Executor.adopt`).
        5. Only now stop the control channel, lease renewal and the heartbeat: until the
           jobs are done a running task may still be cancelled from another process, every
           message still held must keep its lease, or the broker would give it to another
           worker while it still runs here, and the heartbeat shows what still runs. Then
           remove the worker's heartbeat entry (a clean stop is not a lost worker).
        6. Close the pool and the watchdog, and (``final``; ``run_until_idle`` may run
           again) the subscriptions.
        """
        fetch, *beside = stages
        self.executor.accepting = False
        if self.executor.procs is not None:
            self.executor.procs.stop_replacing()
        fetch.cancel()
        await asyncio.gather(fetch, return_exceptions=True)
        await self.fetcher.hand_back()
        await self._let_finish(grace)
        await self.executor.cancel_running("shutdown", hard=self.hard)
        for stage in beside:
            stage.cancel()
        await asyncio.gather(*beside, return_exceptions=True)
        if final:
            await self.heartbeat.remove()
        await self._close(final)

    async def _let_finish(self, grace: float) -> None:
        """Wait up to ``grace`` seconds for every started job (running or settling)."""
        pending = {job.handle for job in self.window.jobs.values() if job.handle is not None}
        if not pending or self.hard or grace <= 0:
            return
        loop = asyncio.get_running_loop()
        escalation = asyncio.create_task(self.escalated.wait())
        deadline = loop.time() + grace
        while pending and not escalation.done() and loop.time() < deadline:
            done, _ = await asyncio.wait(
                {*pending, escalation},
                timeout=deadline - loop.time(),
                return_when=asyncio.FIRST_COMPLETED,
            )
            pending -= done
        escalation.cancel()
        await asyncio.gather(escalation, return_exceptions=True)

    async def _close(self, final: bool) -> None:
        await self.announcer.drain()
        await self.executor.close()
        await self.settler.close()
        if final:
            self.bus.close_all()
        log.info("worker %s stopped", self.name)


def _default_buffer(concurrency: int, multiple: float) -> int:
    """The prefetch buffer a broker asks for by default: ``multiple`` times the slots, at
    least 1 (0.5: ``concurrency // 2``)."""
    return max(1, int(concurrency * multiple))


def _checked(queues: Sequence[str], concurrency: int, prefetch_buffer: int | None) -> list[str]:
    """The worker's queues, after checking the options (ValueError for a bad one)."""
    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
        raise ValueError(f"worker concurrency must be a positive integer, got {concurrency!r}")
    if prefetch_buffer is not None and (
        not isinstance(prefetch_buffer, int) or prefetch_buffer < 0
    ):
        raise ValueError("worker prefetch_buffer must be a non-negative integer")
    checked = name_list(queues, "worker queues")
    if not checked:
        raise ValueError(f"worker queues must be non-empty names, got {queues!r}")
    # The names producers can send to: a worker on any other would wait for ever. A name
    # given twice is listened on once.
    return list(dict.fromkeys(check_queue(q, "worker") for q in checked))


def _checked_waits(poll_interval: float, stall_timeout: float | None) -> float:
    """The stall timeout (its default for None), after checking both waits: with a fetch
    waiting 0 s the fetch loop holds the event loop, and a task sent never runs."""
    if (
        isinstance(poll_interval, bool)
        or not isinstance(poll_interval, int | float)
        or not 0 < poll_interval < math.inf
    ):
        raise ValueError(
            f"worker poll_interval must be a positive number of seconds, got {poll_interval!r}"
        )
    if stall_timeout is None:
        return max(10.0, 5 * poll_interval)
    if (
        isinstance(stall_timeout, bool)
        or not isinstance(stall_timeout, int | float)
        or not poll_interval < stall_timeout < math.inf
    ):
        raise ValueError(
            f"worker stall_timeout must be seconds longer than poll_interval "
            f"({poll_interval!r} s), or every idle fetch would count as stalled; "
            f"got {stall_timeout!r}"
        )
    return float(stall_timeout)
