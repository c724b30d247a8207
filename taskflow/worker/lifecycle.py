"""A worker's life on the app's loop: start, the scripted shutdown, and ``run_until_idle``.

The state machine is ``new -> running -> stopping -> stopped``; ``run_until_idle`` goes
from ``new`` back to ``new``. ``Worker.stop`` documents the shutdown sequence that
:func:`_shutdown` carries out.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
from typing import TYPE_CHECKING

from ..brokers.base import Delivery
from ..errors import TaskflowError
from .admit import admit, record_lost
from .control import control_loop
from .resilience import describe

if TYPE_CHECKING:
    from .scheduler import Job
    from .worker import Worker

__all__ = ["adopt_orphan", "drain", "request_stop", "start"]

log = logging.getLogger("taskflow.worker")

# How long a stop waits for jobs that are writing their outcome before it hands their
# messages back: a graceful stop, and a hard one (stop_now returns within a few seconds).
_SETTLE_WAIT = 10.0
_SETTLE_WAIT_HARD = 1.0


# -- from any thread -------------------------------------------------------------------
def start(w: Worker) -> None:
    """Start ``w`` on the app's loop; returns once it is consuming."""
    with w._state_lock:
        if w._state != "new":
            raise TaskflowError(f"worker {w.name} was already started")
        w._state = "running"
    ready: concurrent.futures.Future[None] = concurrent.futures.Future()
    w._main = w.app._runtime.submit(_run(w, ready))
    w.app._workers.append(w)
    try:
        ready.result()
    except BaseException:
        _finish_state(w)
        raise


def request_stop(w: Worker, timeout: float, hard: bool) -> None:
    """Ask ``w`` to stop; waits for it unless called from the loop itself."""
    with w._state_lock:
        if w._state == "new":
            w._state = "stopped"
            w._stopped.set()
            return
        if w._state == "stopped":
            return
        w._state = "stopping"
        loop = w.app._runtime.loop
    loop.call_soon_threadsafe(_on_stop_request, w, timeout, hard)
    if not w.app._runtime.in_loop_thread():
        w._stopped.wait()


def _on_stop_request(w: Worker, timeout: float, hard: bool) -> None:
    w._grace = min(w._grace, max(0.0, timeout))
    if hard:
        w._hard = True
        if w._escalate is not None:
            w._escalate.set()
    if w._stop_event is not None:
        w._stop_event.set()


# -- on the loop -----------------------------------------------------------------------
async def _setup(w: Worker) -> None:
    await w.app._connect()
    for q in w.queues:
        await w.app._declare(q)
    w._room = asyncio.Event()
    w._pool = concurrent.futures.ThreadPoolExecutor(
        w.concurrency, thread_name_prefix=f"taskflow-{w.app.name}"
    )


async def _run(w: Worker, ready: concurrent.futures.Future[None]) -> None:
    w._stop_event = asyncio.Event()
    w._escalate = asyncio.Event()
    if w._state == "stopping":
        w._stop_event.set()
    try:
        await _setup(w)
    except BaseException as exc:
        ready.set_exception(exc)
        await _teardown(w)
        return
    helpers = [asyncio.create_task(w._fetch_loop(), name="taskflow-fetch")]
    if w.app.broker.capabilities.control:
        helpers.append(asyncio.create_task(control_loop(w), name="taskflow-control"))
    if w.app.broker.capabilities.leases:
        helpers.append(asyncio.create_task(w.leases.run(), name="taskflow-lease"))
    for helper in helpers:
        helper.add_done_callback(lambda task: _stage_ended(w, task))
    ready.set_result(None)
    log.info(
        "worker %s consuming %s (concurrency %d)",
        w.name,
        ",".join(w.queues),
        w.concurrency,
    )
    try:
        await w._stop_event.wait()
    finally:
        await _shutdown(w, helpers)


def _stage_ended(w: Worker, task: asyncio.Task[None]) -> None:
    """A stage ends only when the worker stops; one that died stops the worker."""
    if task.cancelled():
        return
    exc = task.exception()
    if exc is None and w._state != "running":
        return
    with w._state_lock:
        if w._state != "running":
            return
        w._state = "stopping"
    w.fatal = exc or RuntimeError(f"the {task.get_name()} stage returned")
    log.critical(
        "worker %s: its %s stage died (%s); stopping the worker",
        w.name,
        task.get_name().removeprefix("taskflow-"),
        describe(w.fatal),
        exc_info=exc,
    )
    _on_stop_request(w, w._grace, hard=False)


async def _shutdown(w: Worker, helpers: list[asyncio.Task[None]]) -> None:
    helpers[0].cancel()
    await asyncio.gather(helpers[0], return_exceptions=True)
    await _hand_back_buffered(w)
    # Every started job, running or still settling (its outcome being written).
    pending = {job.handle for job in w._held.values() if job.handle is not None}
    if pending and not w._hard and w._grace > 0:
        assert w._escalate is not None
        loop = asyncio.get_running_loop()
        escalation = asyncio.create_task(w._escalate.wait())
        deadline = loop.time() + w._grace
        while pending and not escalation.done() and loop.time() < deadline:
            done, _ = await asyncio.wait(
                {*pending, escalation},
                timeout=deadline - loop.time(),
                return_when=asyncio.FIRST_COMPLETED,
            )
            pending -= done
        escalation.cancel()
        await asyncio.gather(escalation, return_exceptions=True)
    await _cancel_running(w, "shutdown")
    for helper in helpers[1:]:
        helper.cancel()
    await asyncio.gather(*helpers[1:], return_exceptions=True)
    await _teardown(w)


async def _cancel_running(w: Worker, reason: str) -> None:
    handles = []
    for job in list(w._running.values()):
        if job.handle is not None and not job.handle.done():
            job.cancel_reason = job.cancel_reason or reason
            if job.ctx is not None:
                job.ctx.cancelled.set(reason)
            job.handle.cancel()
            handles.append(job.handle)
    settling = [j.handle for j in w._held.values() if j.handle is not None]
    handles += [h for h in settling if not h.done() and h not in handles]
    if not handles:
        return
    # Cancelled ones hand their message back; settling ones finish, unless an outage
    # keeps them writing: then their message is left to the broker too.
    _, late = await asyncio.wait(handles, timeout=_SETTLE_WAIT_HARD if w._hard else _SETTLE_WAIT)
    for handle in late:
        handle.cancel()
    if late:
        await asyncio.wait(late, timeout=_SETTLE_WAIT_HARD)


def adopt_orphan(w: Worker, job: Job) -> None:
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
        _hand_back_when_done(w, job), name=f"taskflow-orphan-{job.envelope.id}"
    )
    w._orphans.add(task)
    task.add_done_callback(w._orphans.discard)


async def _hand_back_when_done(w: Worker, job: Job) -> None:
    assert job.body is not None
    body = asyncio.wrap_future(job.body)
    lease = job.delivery.lease
    while True:
        done, _ = await asyncio.wait({body}, timeout=lease / 3 if lease else None)
        if done:
            break
        with contextlib.suppress(Exception):
            await job.delivery.touch()
    if not body.cancelled():
        body.exception()  # retrieved: the run was stopped, its outcome does not count
    await w.settle.requeue(job, started=True)


async def _teardown(w: Worker, *, final: bool = True) -> None:
    await w.settle.publisher.drain()
    w._watchdog.close()
    if w._timer is not None:
        w._timer.cancel()
    pool, w._pool = w._pool, None
    if pool is not None:
        pool.shutdown(wait=False, cancel_futures=True)
        threads = list(getattr(pool, "_threads", ()))
        for _ in range(400):  # idle threads exit at once; adopted bodies are not waited for
            if sum(t.is_alive() for t in threads) <= len(w._orphans):
                break
            await asyncio.sleep(0.005)
    if final:  # run_until_idle() may be called again: its subscribers stay open
        w.bus.close_all()
    _finish_state(w)
    log.info("worker %s stopped", w.name)


def _finish_state(w: Worker) -> None:
    with w._state_lock:
        w._state = "stopped"
    if w in w.app._workers:
        w.app._workers.remove(w)
    w._stopped.set()


async def _hand_back_buffered(w: Worker) -> None:
    for job in list(w._sched.drain()):
        w._held.pop(job.envelope.id, None)
        w.leases.drop(job.delivery)
        await w.settle.requeue(job)


async def drain(w: Worker) -> None:
    """``run_until_idle``: process what is due now, then leave ``w`` as if never started."""
    await _setup(w)
    try:
        while True:
            credits = w.concurrency + w.prefetch_buffer - len(w._held)
            got: list[Delivery] = []
            if credits > 0:
                got = await w.app.broker.fetch(w._sched.fetch_order(), credits, 0)
                for delivery in got:
                    await admit(w, delivery)
                await record_lost(w)
            w._dispatch()
            handles = {j.handle for j in w._running.values() if j.handle is not None}
            if handles:
                await asyncio.wait(handles, return_when=asyncio.FIRST_COMPLETED)
                continue
            if got:
                continue
            wait = w._sched.next_release()
            if wait is None or w.clock.is_fake:
                break
            await asyncio.sleep(wait)
    finally:
        await _hand_back_buffered(w)
        await _cancel_running(w, "shutdown")
        await _teardown(w, final=False)
        with w._state_lock:
            w._state = "new"
        w._stopped.clear()
