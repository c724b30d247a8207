"""Running one task body: coroutines on the loop, sync functions on the worker's threads.

Deadlines: a coroutine is cancelled at its deadline; a sync function sees
``ctx.cancelled`` set and gets :class:`~taskflow.errors.TaskTimeout` raised inside its
thread (an asynchronous exception: it lands at the next Python bytecode, so a call blocked
in C returns first). A cancelled or stopped sync function gets :class:`Interrupted` the
same way.

Sync bodies run on :class:`BodyThreads`, a pool made for this one job: each thread takes
runs from a queue and hands outcomes back to the loop in batches (one wake-up of the loop
for every outcome that finished while it was busy), with no per-run future, condition or
executor bookkeeping: the hop from the loop to a thread and back is the largest fixed cost
of a sync task.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import ctypes
import os
import threading
from collections.abc import Callable
from typing import Any, Final

from ..context import TaskContext, reset_current, set_current
from ..errors import TaskTimeout, stop_iteration_error
from .affinity import beside_supported, place_beside, repin_current_thread

__all__ = ["BodyRun", "BodyThreads", "Interrupted", "run_async", "run_sync"]

# How long a sync task gets to unwind after it was interrupted before the worker reports
# the outcome anyway (the slot stays busy until the thread really returns).
UNWIND_GRACE = 2.0
# The same when the worker stops: stop_now() must return within a few seconds; a body that
# is still running then is adopted (see Executor.adopt), not waited for.
STOP_UNWIND_GRACE = 0.5

_QUEUED: Final = 0
_RUNNING: Final = 1
_DONE: Final = 2
_CANCELLED: Final = 3


class Interrupted(BaseException):
    """Raised inside a sync task's thread when the task is cancelled or its worker stops.

    A ``BaseException`` (like ``KeyboardInterrupt``), so that ``except Exception`` in task
    code does not swallow it; ``finally`` blocks and context managers still run.
    """


class BodyRun:
    """One sync body handed to :class:`BodyThreads`: its call, its thread while it runs,
    and its outcome."""

    __slots__ = (
        "args",
        "context",
        "ctx",
        "error",
        "fn",
        "fut",
        "handoff",
        "ident",
        "interrupted",
        "kwargs",
        "lock",
        "state",
        "value",
        "waiters",
    )

    def __init__(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        ctx: TaskContext,
        fut: asyncio.Future[Any],
    ) -> None:
        self.fn = fn
        self.args = args
        self.kwargs = kwargs
        self.ctx = ctx
        # The context variables of the task that submits the run (what the execute
        # middleware set, the attempt's span): the body runs in a copy of them, as
        # ``asyncio.to_thread`` runs a function, and as an ``async def`` body sees them.
        self.context = contextvars.copy_context()
        self.fut = fut  # the loop's future of the outcome (the awaiting task's)
        self.lock = threading.Lock()
        self.state = _QUEUED
        self.ident: int | None = None
        self.interrupted = False
        self.value: Any = None
        self.error: BaseException | None = None
        self.waiters: list[asyncio.Future[None]] | None = None
        # Held by the loop while it waits for the body's thread to take the run
        # (BodyThreads._hand_over); released by that thread. Set under ``lock``.
        self.handoff: threading.Lock | None = None

    def done(self) -> bool:
        """Whether the body can no longer run: it returned, or was cancelled unstarted."""
        return self.state >= _DONE

    def cancel(self) -> bool:
        """Keep a body that has not started from starting; True if it will not run."""
        with self.lock:
            if self.state == _QUEUED:
                self.state = _CANCELLED
            return self.state == _CANCELLED

    def interrupt(self, exc: type[BaseException]) -> None:
        """Raise ``exc`` inside the body's thread, if the body is running."""
        with self.lock:
            if self.state == _RUNNING and self.ident is not None and not self.interrupted:
                self.interrupted = True
                ctypes.pythonapi.PyThreadState_SetAsyncExc(
                    ctypes.c_ulong(self.ident), ctypes.py_object(exc)
                )

    def finished(self) -> asyncio.Future[None]:
        """On the loop: a future set once the body can no longer run (whatever became of
        the task awaiting its outcome)."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.done():
            waiter.set_result(None)
        else:
            if self.waiters is None:
                self.waiters = []
            self.waiters.append(waiter)
        return waiter

    def call(self) -> bool:
        """In the body's thread: run it; False if it was cancelled before it started."""
        # The interrupt is sent only while the state is RUNNING, under the lock, and a
        # late one is withdrawn when the state leaves RUNNING: an asynchronous exception
        # can only land between the two, inside the try below.
        ident = threading.get_ident()
        with self.lock:
            started = self.state == _QUEUED
            if started:
                self.ident = ident
                self.state = _RUNNING
            handoff = self.handoff
        if handoff is not None:
            handoff.release()
        if not started:
            return False
        context = self.context
        token = context.run(set_current, self.ctx)
        try:
            self.value = context.run(self.fn, *self.args, **self.kwargs)
        except StopIteration as exc:  # a future refuses it: the outcome would be lost
            self.error = stop_iteration_error(exc)
        except BaseException as exc:
            self.error = exc
        finally:
            try:
                with self.lock:
                    self.state = _DONE
                    if self.interrupted:
                        # Withdraw an interrupt that arrived too late to land in the body.
                        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident), None)
            finally:
                context.run(reset_current, token)
        return True


def _thread_cpus() -> set[int]:
    """The CPUs the calling thread (the loop's) may run on; an empty set where unknown."""
    getaffinity = getattr(os, "sched_getaffinity", None)
    if getaffinity is None:
        return set()
    try:
        return set(getaffinity(0))
    except OSError:
        return set()


def _on_one_cpu() -> bool:
    """Whether the calling thread may run on one CPU only (False where unknown)."""
    return len(_thread_cpus()) == 1


class _Slot:
    """One thread of :class:`BodyThreads`: the run handed to it, and the lock it sleeps on
    while it has none (held while the thread is idle; released to wake it)."""

    __slots__ = ("cpus", "run", "tid", "wake")

    def __init__(self, run: BodyRun | None) -> None:
        self.run = run
        self.tid = 0  # the thread's native id, once it runs
        # Woken on its waker's CPU (BodyThreads.beside): the CPUs it had before.
        self.cpus: set[int] | None = None
        self.wake = threading.Lock()
        self.wake.acquire()


class BodyThreads:
    """The threads that run one worker's sync bodies (at most ``size``, started as needed).

    :meth:`submit` is called on the loop; outcomes come back to the loop in batches.

    Each idle thread sleeps on a lock of its own, and a run goes to the thread that became
    idle last (a stack): a worker that gets one task at a time keeps one thread busy and
    wakes no other, where threads waiting on one shared queue would take turns (each
    wake-up of a cold thread costs several context switches, and the interpreter lock
    changing hands among them). A thread that finishes a body takes the next waiting run
    without sleeping, and counts as idle before it hands its outcome to the loop, so that
    a task that arrives in answer to that outcome finds it idle rather than starting
    another thread. A new thread starts only when none is idle and fewer than ``size``
    run. Runs submitted together wake one idle thread, which wakes the next as it takes
    its run: woken all at once, the threads would contend for the interpreter lock.

    A single body handed to an idle pool is started at once: one step of the loop after
    :meth:`submit`, if it is still the only body running and the only one submitted in
    that step, the loop waits (at most :attr:`handoff_wait` seconds, without the
    interpreter lock) for its thread to take it. Otherwise the woken thread would get the
    interpreter lock only when the loop next blocks in a system call, after its next fetch
    and whatever else is ready: 0.3-0.6 ms of a pickup. Several bodies at once (a drain)
    are not waited for: the loop has their outcomes and its next fetch to see to, and the
    threads start when it blocks. The hand-over needs the body's thread on the loop's CPU,
    where it can run only while the loop waits: the whole process is on one CPU
    (``--cpu-affinity auto``, ``taskset``, a one-CPU container), or else the thread was
    woken there (:attr:`beside`). There it is made for a body submitted ``single`` only
    (the executor has no other task under way). The jobs of a batch reach their bodies
    over several steps of the loop, so neither this pool at the first submit nor its
    check a step later (:meth:`_hand_over`) can tell a lone body from the first of a
    batch, and the loop waiting for each batch's first thread slows a drain.

    Where the platform allows (:attr:`beside`), an idle thread is woken on the CPU of the
    thread that wakes it (the loop's, or for a burst the thread that woke before it), and
    gives itself back its CPUs before it runs its body
    (:func:`~taskflow.worker.affinity.place_beside`). Woken on another CPU, as the system
    would do (the idle one), the thread and the loop hand the interpreter lock and the
    outcome back and forth across CPUs; woken beside the loop, the threads stay near it
    unless the system moves them. When this was added (2026-12-03), a sync pickup: 0.55-0.69
    ms at the median against 0.43-0.48 (``python -m bench.pickup_cost --sync``); a drain of
    short sync bodies with 8 threads: about 3,800 against 4,200-4,500 tasks/s (``python -m
    bench.pools``). The process on one CPU (``--cpu-affinity auto``) is faster still: see
    ``docs/guide.md``, "CPU affinity".
    """

    handoff_wait = 0.0005

    def __init__(self, loop: asyncio.AbstractEventLoop, size: int, name: str) -> None:
        self._loop = loop
        self._size = max(1, size)
        self._name = name
        self.threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        # Under ``_lock``: the idle threads (the last to become idle at the end), the runs
        # waiting for a thread, the outcomes waiting for the loop.
        self._idle: list[_Slot] = []
        self._slots: list[_Slot] = []  # one per thread
        self._waking = False  # a thread was woken with a run and has not taken it yet
        self._pending: collections.deque[BodyRun] = collections.deque()
        self._ready: list[BodyRun] = []
        self._scheduled = False
        self._closed = False
        self._last: BodyRun | None = None  # the run submitted last
        self.hand_over = _on_one_cpu()
        """Whether a single body is handed over (see above; a test seam too)."""
        self.handed_over = 0  # bodies the loop waited for a thread to start (a test seam)
        self.beside = not self.hand_over and beside_supported(_thread_cpus())
        """Whether an idle thread is woken on its waker's CPU (see above; a test seam)."""
        self.placed = 0  # threads woken beside their waker (a test seam)
        self._count_lock = threading.Lock()

    def submit(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        ctx: TaskContext,
        *,
        single: bool = False,
    ) -> BodyRun:
        """Queue a body; its outcome is set on ``run.fut`` on the loop. ``single``: the
        caller has no other task under way, so the loop may wait for the body's thread to
        take it (the hand-over, see above)."""
        if self._closed:
            raise RuntimeError("the worker's threads are closed")
        run = BodyRun(fn, args, kwargs, ctx, self._loop.create_future())
        slot: _Slot | None = None
        start = False
        with self._lock:
            if self._idle and not self._waking:
                slot = self._idle.pop()
                slot.run = run
                self._waking = True
                alone = len(self._idle) == len(self.threads) - 1
            elif self._idle:
                # A thread woken for a run has not taken it yet: it wakes the next one
                # (see _chain), so that a burst does not wake every idle thread at once.
                self._pending.append(run)
                alone = False
            elif len(self.threads) < self._size and not self._finishing():
                start = True
                alone = False
            else:
                # Every thread runs a body, or one has returned from its body and takes
                # this run without sleeping (a new thread would take turns with it). With
                # one thread only, that one is the finishing one: hand the run over.
                self._pending.append(run)
                alone = len(self.threads) == 1 and self._finishing()
        self._last = run
        if slot is not None:
            if self.beside and self._place(slot) and alone and single:
                self._loop.call_soon(self._hand_over, run)  # it wakes on the loop's CPU
            slot.wake.release()
        elif start:
            self._start_thread(run)
        if alone and self.hand_over:
            self._loop.call_soon(self._hand_over, run)
        return run

    def _place(self, slot: _Slot) -> bool:
        # Before waking the idle ``slot``: its thread is to wake on the caller's CPU (see
        # ``beside``); it gives itself back its CPUs first thing (_serve). True if done.
        slot.cpus = place_beside(slot.tid)
        if slot.cpus is None:
            return False
        with self._count_lock:  # also called in the threads (_chain)
            self.placed += 1
        return True

    def _finishing(self) -> bool:
        # Under ``_lock``, with no thread idle: whether one has returned from its body and
        # not yet taken the next run or gone idle. Not asked in a drain at full size.
        return any(slot.run is not None and slot.run.state >= _DONE for slot in self._slots)

    def _hand_over(self, run: BodyRun) -> None:
        # On the loop, one step after ``run`` was handed to an idle pool: if it is still
        # the only body, let its thread take it now (see the class's docstring).
        if self._last is not run or len(self._idle) != len(self.threads) - 1:
            return  # another body was submitted since, or another thread runs one
        handoff = threading.Lock()
        handoff.acquire()
        with run.lock:
            if run.state != _QUEUED:
                return  # taken already (or cancelled)
            run.handoff = handoff
        if handoff.acquire(timeout=self.handoff_wait):
            self.handed_over += 1

    def _start_thread(self, run: BodyRun) -> None:
        slot = _Slot(run)
        self._slots.append(slot)
        thread = threading.Thread(
            target=self._serve, args=(slot,), name=f"{self._name}_{len(self.threads)}", daemon=True
        )
        self.threads.append(thread)
        thread.start()

    def _serve(self, slot: _Slot) -> None:
        lock, pending, idle = self._lock, self._pending, self._idle
        slot.tid = threading.get_native_id()
        run = slot.run
        while run is not None:
            if slot.cpus is not None:
                # Woken on its waker's CPU (see BodyThreads.beside): its CPUs back, before
                # the body runs. It stays on that CPU until the system moves it.
                cpus, slot.cpus = slot.cpus, None
                with contextlib.suppress(OSError):
                    os.sched_setaffinity(0, cpus)
            repin_current_thread()  # if the last body started a program (--cpu-affinity)
            posted = run.call()
            wake_loop = sleep = False
            with lock:
                if posted:
                    # The outcome goes to the loop batched with any others that finished
                    # since the loop last took them (one wake-up of the loop for all).
                    self._ready.append(run)
                    wake_loop = not self._scheduled
                    self._scheduled = True
                if pending:
                    run = slot.run = pending.popleft()
                else:
                    run = slot.run = None
                    if not self._closed:
                        idle.append(slot)
                        sleep = True
            if wake_loop:
                # A closed loop raises RuntimeError: nobody awaits the outcome any more.
                with contextlib.suppress(RuntimeError):
                    self._loop.call_soon_threadsafe(self._deliver)
            if sleep:
                slot.wake.acquire()  # released with a run (submit, _chain) or none (close)
                run = slot.run
                if run is not None:
                    self._chain()

    def _chain(self) -> None:
        # In a thread just woken with a run: wake the next idle thread if runs wait.
        following: _Slot | None = None
        with self._lock:
            self._waking = False
            if self._pending and self._idle:
                following = self._idle.pop()
                following.run = self._pending.popleft()
                self._waking = True
        if following is not None:
            if self.beside:
                self._place(following)  # on this thread's CPU, the loop's as a rule
            following.wake.release()

    def _deliver(self) -> None:
        with self._lock:
            ready, self._ready = self._ready, []
            self._scheduled = False
        for run in ready:
            if run is self._last:
                self._last = None  # a finished run is no hand-over's: its task may go
            fut = run.fut
            if not fut.done():  # else the awaiting task was cancelled
                if run.error is None:
                    fut.set_result(run.value)
                else:
                    fut.set_exception(run.error)
            waiters, run.waiters = run.waiters, None
            for waiter in waiters or ():
                if not waiter.done():
                    waiter.set_result(None)

    def cancelled(self, run: BodyRun) -> None:
        """On the loop: ``run`` was cancelled before it started (it frees its place)."""
        waiters, run.waiters = run.waiters, None
        for waiter in waiters or ():
            if not waiter.done():
                waiter.set_result(None)

    def close(self) -> None:
        """Let every thread end once it is idle (a body still running is not waited for;
        runs still waiting for a thread run first)."""
        if self._closed:
            return
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for slot in idle:
            slot.run = None
            slot.wake.release()


async def run_sync(
    threads: BodyThreads,
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    ctx: TaskContext,
    *,
    on_submit: Callable[[BodyRun], None] | None = None,
    single: bool = False,
) -> Any:
    """Run ``fn`` on ``threads``; cancelling the awaiting task interrupts the thread.

    The deadline is the caller's (the worker's watchdog cancels at it, after setting
    ``ctx.cancelled`` with reason ``"timeout"``, so the thread gets :class:`TaskTimeout`).
    ``on_submit`` receives the run, which tells whether the body still runs after the
    cancellation was reported. ``single``: see :meth:`BodyThreads.submit`.
    """
    run = threads.submit(fn, args, kwargs, ctx, single=single)
    if on_submit is not None:
        on_submit(run)
    try:
        return await run.fut
    except asyncio.CancelledError:
        ctx.cancelled.set()
        reason = ctx.cancelled.reason
        run.interrupt(TaskTimeout if reason == "timeout" else Interrupted)
        await _unwind(threads, run, STOP_UNWIND_GRACE if reason == "shutdown" else UNWIND_GRACE)
        raise


async def _unwind(threads: BodyThreads, run: BodyRun, grace: float) -> None:
    if run.cancel():
        threads.cancelled(run)
        return
    finished = run.finished()
    done, _ = await asyncio.wait({finished}, timeout=grace)
    if not done:
        finished.cancel()


async def run_async(
    fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], ctx: TaskContext
) -> Any:
    """Await the coroutine function; its deadline is the caller's (the worker's watchdog
    cancels it, after setting ``ctx.cancelled`` with reason ``"timeout"``)."""
    token = set_current(ctx)
    try:
        return await fn(*args, **kwargs)
    except asyncio.CancelledError:
        ctx.cancelled.set()
        raise
    finally:
        reset_current(token)
