"""The executor: runs the jobs the scheduler lets through, one asyncio task each.

A job takes a slot (at most ``concurrency`` at once) while its task's own code runs, inside
the app's execute middleware: coroutines on the loop, sync bodies on the worker's thread
pool (:mod:`.bodies`), each deadline kept by the one :class:`~.watchdog.Watchdog`. A failed
attempt goes to the retry policy (:func:`.policy.decide`) and every outcome to the
:class:`~.settle.Settler`. The slot is freed as soon as the task's code returns, so the next
task starts while this one's outcome is written; its message stays in the prefetch window
until it is acked.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import random
import traceback
from typing import Any, Final

from ..clock import Clock
from ..context import TaskContext
from ..errors import USER_CODE_ERRORS, ConfigError, PayloadError, TaskTimeout
from ..kernel import Kernel
from ..middleware import ExecuteNext
from .bodies import BodyThreads, Interrupted, run_async, run_sync
from .cluster_limits import ClusterGate
from .fetcher import Window
from .leases import check_hold
from .policy import decide
from .procpool import ChildLost, ProcessPool, UndecodablePayload
from .scheduler import Job, Scheduler
from .settle import Settler
from .stats import WorkerStats
from .watchdog import Watchdog

__all__ = ["Executor", "Interrupted", "payload_error"]

log = logging.getLogger("taskflow.worker")

# How long a stop waits for jobs that are writing their outcome before it hands their
# messages back: a graceful stop, and a hard one (stop_now returns within a few seconds).
_SETTLE_WAIT: Final = 10.0
_SETTLE_WAIT_HARD: Final = 1.0
# How long a closing pool's idle threads get to end (bodies still running are not waited for).
_POOL_EXIT: Final = 2.0


class Executor:
    """Runs one worker's jobs in its slots."""

    def __init__(
        self,
        kernel: Kernel,
        *,
        sched: Scheduler,
        window: Window,
        settler: Settler,
        stats: WorkerStats,
        clock: Clock,
        rng: random.Random,
        concurrency: int,
        procs: ProcessPool | None = None,
    ) -> None:
        self.kernel = kernel
        self.procs = procs
        """The child processes running sync bodies (``pool="processes"``), else None."""
        self.sched = sched
        self.window = window
        self.settler = settler
        self.stats = stats
        self.clock = clock
        self.rng = rng
        self.concurrency = concurrency
        self.running: dict[str, Job] = {}
        """The jobs in a slot, by task id."""
        self.accepting = False
        """Whether a freed slot starts the next job (False once the worker stops)."""
        self._call: ExecuteNext = self._invoke
        self._attempts: dict[int, tuple[Job, tuple[Any, ...], dict[str, Any]]] = {}
        self._pool: BodyThreads | None = None
        # The loop the worker consumes on, from open() to close(): asked once, not on
        # every dispatch (``asyncio.get_running_loop`` checks the process id, a system
        # call, each time).
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._watchdog = Watchdog(concurrency)
        self._orphans: set[asyncio.Task[None]] = set()
        self.gate = ClusterGate(kernel.settings.name, clock)
        """Admission against the limits shared by every worker (:mod:`.cluster_limits`)."""
        self.gate.on_release = self._permit_released

    def open(self) -> None:
        """On the loop, as the worker starts consuming: the thread pool, and the execute
        chain from the app's middleware as it is now. ``ConfigError`` if a task declares
        a cluster-wide limit that the broker cannot share."""
        registry = self.kernel.registry
        tasks = [registry[name] for name in registry]
        self.gate.open(tasks, self.kernel.broker)
        check_hold(tasks, self.kernel.broker, self.kernel.settings.default_timeout)
        self._call = self.kernel.middleware.wrap_execute(self._invoke)
        self._loop = loop = asyncio.get_running_loop()
        self._pool = BodyThreads(loop, self.concurrency, f"taskflow-{self.kernel.settings.name}")
        self.accepting = True

    # -- slots -----------------------------------------------------------------------
    def dispatch(self) -> None:
        """Start jobs from the scheduler while slots are free."""
        loop = self._loop or asyncio.get_running_loop()
        while len(self.running) < self.concurrency:
            job = self.sched.pop()
            if job is None:
                break
            self.running[job.envelope.id] = job
            job.handle = loop.create_task(self._execute(job))
        wait = self.sched.next_release()
        if wait is not None and self._timer is None and len(self.running) < self.concurrency:
            self._timer = loop.call_later(wait, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self.accepting:
            self.dispatch()

    def _free_slot(self, job: Job, ran: float) -> None:
        self.window.finished(job, ran)
        running, tid = self.running, job.envelope.id
        if running.get(tid) is job:  # _vacate, inline: a call here costs every task
            del running[tid]
            if self.accepting:
                self.dispatch()

    def _vacate(self, job: Job) -> bool:
        """Take ``job`` out of its slot; False if it held none. Only ``job``'s own entry
        leaves: a job given up (its lease lost before it started) may leave after the
        redelivery that replaced it took a slot under the same task id."""
        running, tid = self.running, job.envelope.id
        if running.get(tid) is job:
            del running[tid]
            return True
        return False

    def _release(self, job: Job) -> None:
        if job.envelope.id in self.running:  # not once its body ran (_free_slot)
            self._vacate(job)
        self.window.release(job)
        # Nothing to start unless a slot is free and a job waits (most often the job's own
        # slot started the next one as its body returned: _free_slot). The slots first:
        # ``len(self.sched)`` is a call of Python code.
        if self.accepting and len(self.running) < self.concurrency and self.sched:
            self.dispatch()

    def _permit_released(self, task: str) -> None:
        self.sched.wake(task)
        if self.accepting:
            self.dispatch()

    async def _admit(self, job: Job) -> bool:
        """Take ``job``'s cluster-wide token and permit while its slot is reserved (one
        round trip). Refused: the slot is freed at once and the job waits in the
        scheduler, its message held, until it may ask again. False if it is not to run
        now (deferred, or handed back because the worker stops)."""
        try:
            wait = await self.gate.admit(job)
        except asyncio.CancelledError:  # stopping while asking
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            wait = -1.0
        except ConfigError as exc:  # registered after the worker started, not shareable
            self._vacate(job)
            await self.settler.failed(job, exc, 0.0)
            self.stats.processed += 1
            self._release(job)
            return False
        if wait == 0.0 and self.accepting:
            return True
        self._vacate(job)
        if wait > 0 and self.accepting:
            self.sched.defer(job, wait)
            self.window.wake()
            self.dispatch()
            return False
        await self.gate.release(job)  # the worker stops: the message goes back
        await self.settler.requeue(job)
        self._release(job)
        return False

    # -- one job ---------------------------------------------------------------------
    async def _execute(self, job: Job) -> None:
        if self.gate.limits(job) and not await self._admit(job):
            return
        try:
            await self._attempt(job)
        except asyncio.CancelledError:
            await self._after_cancel(job)
        except ChildLost as exc:  # its message comes back after its lease, counted as lost
            job.given_up = True  # the attempt goes on with that delivery
            log.warning("%s; it is delivered again after its lease", exc)
        except Exception as exc:  # settling kept failing (outages are waited out)
            self.settler.abandon(job, exc)
        finally:
            if not job.given_up:  # else it did not end here: it ends on another delivery
                self.stats.processed += 1
            try:
                # Most jobs hold no permit: the gate is not called for them. An adopted
                # body still runs: its permit is released when it returns.
                if job.permit is not None and not job.adopted:
                    await self.gate.release(job)
            finally:
                self._release(job)

    async def _attempt(self, job: Job) -> None:
        env, task = job.envelope, job.task
        if not await self.settler.started(job):
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
            enqueued_at=env.created_at,
            root_id=env.root_id,
            parent_id=env.parent_id,
        )
        job.ctx = ctx
        t0 = self.clock.monotonic()
        try:
            # A child process decodes the arguments of its body itself, from the message.
            in_child = self.procs is not None and not task.is_async
            args, kwargs = ((), {}) if in_child else task.schema.decode_args(env.args, env.kwargs)
        except Exception as exc:
            await self.settler.failed(job, payload_error(env.task, exc), 0.0, reason="payload")
            return
        if job.cancel_reason is not None:
            raise asyncio.CancelledError
        error: BaseException | None = None
        key = id(ctx)
        self._attempts[key] = (job, args, kwargs)
        job.in_user_code = True
        try:
            value = await self._call(ctx)
        except USER_CODE_ERRORS as exc:  # Retry and Reject too; sys.exit() (argparse's)
            error = exc
        except asyncio.CancelledError as exc:
            if not _raised_by_the_body(job):
                raise  # cancelled by the worker: a stop, a timeout, a cancel (_after_cancel)
            # The body's own, e.g. awaiting a future someone else cancelled: handed back,
            # it would run again at once, for ever. It is the attempt's failure.
            error = exc
        finally:
            job.in_user_code = False
            del self._attempts[key]
            duration = self.clock.monotonic() - t0
            # The slot is for running task code: free it now, so the next task starts
            # while this one's outcome is written (its message still counts against the
            # prefetch window until it is acked).
            self._free_slot(job, duration)
        if error is None:
            await self.settler.succeeded(job, value, duration)
            return
        try:
            if isinstance(error, UndecodablePayload):
                # Recorded as on the thread pool: a PayloadError, not the pool's marker
                # class, and without the worker's frames (the decoding ran in the child).
                payload = PayloadError(str(error))
                await self.settler.failed(job, payload, duration, reason="payload")
            else:
                await self.settler.failure(job, decide(job, error, self.rng), duration)
        finally:
            # The error's traceback holds the frames the attempt went through, the body's
            # with its arguments, in cycles with the error (through this frame's ``error``
            # and ``job``, whose finished sync run holds the error too): left to the
            # garbage collector, they would wait for its next pass (thousands of objects
            # away: see foreground.young_threshold). Its outcome written, nothing needs
            # them: the frames' variables and the run go now, and with them the cycles.
            _clear_frames(error)
            error = None
            if job.body is not None and job.body.done():
                job.body = None

    async def _invoke(self, ctx: TaskContext) -> Any:
        """The innermost step of the execute chain: the task's own function."""
        job, args, kwargs = self._attempts[id(ctx)]
        task = job.task
        if task.options.bind:
            args = (ctx, *args)
        if job.envelope.timeout is not None:
            self._watchdog.watch(job, job.envelope.timeout)
        if task.is_async:
            return await run_async(task.fn, args, kwargs, ctx)
        if self.procs is not None:
            return await self.procs.run(job, ctx)
        assert self._pool is not None
        single = len(self.running) == 1  # no other task under way: its body runs alone
        value = await run_sync(
            self._pool, task.fn, args, kwargs, ctx, on_submit=job.set_body, single=single
        )
        if inspect.isawaitable(value):
            # A plain ``def`` wrapper (a decorator) returned the coroutine of an async def:
            # it runs now, on the loop, as an async def body would.
            return await run_async(_awaited, (value,), {}, ctx)
        return value

    async def _after_cancel(self, job: Job) -> None:
        task = asyncio.current_task()
        if task is not None:
            task.uncancel()  # handled here: later awaits in this task must not see it
        if job.settled:  # stopped in its hooks: its message was settled already
            return
        if job.cancel_reason == "timeout":
            timeout = job.envelope.timeout
            exc = TaskTimeout(
                f"{job.envelope.task}[{job.envelope.id}] exceeded its {timeout}s timeout"
            )
            await self.settler.failure(job, decide(job, exc, self.rng), float(timeout or 0.0))
        elif job.cancel_reason == "cancelled":
            await self.settler.cancelled(job)
        elif job.body is not None and not job.body.done():
            # A sync body still runs in its thread: its message must not go back yet.
            self.adopt(job)
        else:
            await self.settler.requeue(job, started=True)

    # -- stopping work ---------------------------------------------------------------
    def cancel(self, task_id: str) -> bool:
        """Stop ``task_id`` if it is in a slot here; True if it was."""
        job = self.running.get(task_id)
        if job is None:
            return False
        job.cancel_reason = "cancelled"
        if job.ctx is not None:
            job.ctx.cancelled.set()
        # Only interrupt the task's own code; a job already settling finishes its
        # bookkeeping (the record was made terminal by whoever cancelled).
        if job.handle is not None and job.in_user_code:
            job.handle.cancel()
        return True

    async def cancel_running(self, reason: str, *, hard: bool) -> None:
        """Cancel every job in a slot (``reason`` for its context), and wait (bounded) for
        them and for the jobs still writing their outcome."""
        handles = []
        for job in list(self.running.values()):
            if job.handle is not None and not job.handle.done():
                job.cancel_reason = job.cancel_reason or reason
                if job.ctx is not None:
                    job.ctx.cancelled.set(reason)
                job.handle.cancel()
                handles.append(job.handle)
        settling = [j for j in self.window.jobs.values() if j.handle is not None]
        # A settled job runs only its hooks now: a stop does not wait for them longer
        # than its grace (a hook on a thread runs on; its end is not awaited).
        hooked = [j.handle for j in settling if j.settled and not j.handle.done()]
        for handle in hooked:
            handle.cancel()
        if hooked:
            log.info(
                "worker %s: stopping without waiting for the hooks of %d finished tasks",
                self.settler.name,
                len(hooked),
            )
        handles += [j.handle for j in settling if not j.handle.done() and j.handle not in handles]
        if not handles:
            return
        # Cancelled ones hand their message back; settling ones finish, unless an outage
        # keeps them writing: then their message is left to the broker too.
        _, late = await asyncio.wait(handles, timeout=_SETTLE_WAIT_HARD if hard else _SETTLE_WAIT)
        for handle in late:
            handle.cancel()
        if late:
            await asyncio.wait(late, timeout=_SETTLE_WAIT_HARD)

    def adopt(self, job: Job) -> None:
        """A stopped job whose sync body still runs in its thread (blocked in C code or a
        system call): keep its lease and hand the message back only once the body returns.

        If the process ends first, the lease runs out and the broker delivers it again.
        """
        job.adopted = True
        log.warning(
            "%s[%s] is still running in its thread after the stop; its message goes back to "
            "the broker when it returns (or after its lease if this process ends first)",
            job.envelope.task,
            job.envelope.id,
        )
        task = asyncio.get_running_loop().create_task(
            self._hand_back_when_done(job), name=f"taskflow-orphan-{job.envelope.id}"
        )
        self._orphans.add(task)
        task.add_done_callback(self._orphans.discard)

    async def _hand_back_when_done(self, job: Job) -> None:
        assert job.body is not None
        finished = job.body.finished()  # the run was stopped: its outcome does not count
        lease = job.delivery.lease
        while True:
            done, _ = await asyncio.wait({finished}, timeout=lease / 3 if lease else None)
            if done:
                break
            with contextlib.suppress(Exception):
                await job.delivery.touch()
        await self.settler.requeue(job, started=True)
        await self.gate.release(job)

    async def close(self) -> None:
        """Stop the watchdog and close the pool; returns once its idle threads ended
        (a body that still runs, adopted, is not waited for)."""
        self.accepting = False
        self._loop = None
        self._watchdog.close()
        await self.gate.close()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.procs is not None:
            await self.procs.close()
        pool, self._pool = self._pool, None
        if pool is None:
            return
        pool.close()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _POOL_EXIT
        while sum(t.is_alive() for t in pool.threads) > len(self._orphans):
            if loop.time() >= deadline:
                break
            await asyncio.sleep(0.005)


def _clear_frames(exc: BaseException) -> None:
    """Drop the local variables of the frames in the tracebacks of ``exc`` and of the
    exceptions it was raised from or during (frames still running keep theirs); the
    tracebacks still say where each frame was."""
    seen: set[int] = set()
    pending: list[BaseException | None] = [exc]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        traceback.clear_frames(current.__traceback__)
        pending += (current.__cause__, current.__context__)


async def _awaited(awaitable: Any) -> Any:
    return await awaitable


def _raised_by_the_body(job: Job) -> bool:
    """Whether a CancelledError out of ``job``'s attempt came from its own code: the worker
    did not cancel the attempt (no reason set, its task not being cancelled)."""
    task = asyncio.current_task()
    return job.cancel_reason is None and task is not None and task.cancelling() == 0


def payload_error(task: str, exc: Exception) -> PayloadError:
    """Arguments that could not be decoded, as a PayloadError that carries no values."""
    if isinstance(exc, PayloadError):
        return exc
    # Decoders of other libraries (protobuf, pydantic, deep recursion) may quote the
    # offending value in their messages: name only what failed.
    return PayloadError(f"{task}: arguments could not be decoded ({type(exc).__name__})")
