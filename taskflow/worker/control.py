"""Beside the fetch loop: local cancellation and the control channel (lease renewal is
in :mod:`.leases`)."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from .resilience import Backoff, Outage, describe

if TYPE_CHECKING:
    from .worker import Worker

__all__ = ["cancel_all", "cancel_local", "cancel_swallowed", "control_loop"]

log = logging.getLogger("taskflow.worker")


async def cancel_local(w: Worker, task_id: str) -> bool:
    """Stop ``task_id`` if ``w`` runs or holds it, else remember it; True if found."""
    job = w._running.get(task_id)
    if job is not None:
        job.cancel_reason = "cancelled"
        if job.ctx is not None:
            job.ctx.cancelled.set()
        # Only interrupt the task's own code; a job already settling finishes its
        # bookkeeping (the record was made terminal by whoever cancelled).
        if job.handle is not None and job.in_user_code:
            job.handle.cancel()
        return True
    job = w._sched.remove(task_id)
    if job is not None:
        w._held.pop(task_id, None)
        try:
            await w.settle.cancelled(job, started=False)
        finally:
            w.leases.drop(job.delivery)
        return True
    w._cancelled[task_id] = None
    while len(w._cancelled) > 10_000:
        w._cancelled.pop(next(iter(w._cancelled)))
    return False


async def cancel_all(w: Worker) -> int:
    """Cancel everything ``w`` holds (running and prefetched); how many there were."""
    ids = list(w._held)
    for tid in ids:
        await w.app._cancel(tid)
        await cancel_local(w, tid)
    return len(ids)


async def control_loop(w: Worker) -> None:
    """Apply broadcast commands (cancel a running task) until cancelled."""
    outage = Outage(f"worker {w.name}: control channel")
    backoff = Backoff(w.rng, first=0.2)
    try:
        while True:
            try:
                commands = await w.app.broker.control_messages(w.poll_interval)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                outage.failed(exc)
                await asyncio.sleep(backoff.delay())
                continue
            outage.recovered()
            backoff.reset()
            for command in commands:
                if command.get("cmd") == "cancel" and isinstance(command.get("id"), str):
                    try:
                        await cancel_local(w, command["id"])
                    except asyncio.CancelledError:
                        raise
                    except Exception as exc:  # one command must not end the channel
                        log.warning(
                            "worker %s: could not cancel %s (%s)",
                            w.name,
                            command["id"],
                            describe(exc),
                        )
            if cancel_swallowed():
                raise asyncio.CancelledError
    finally:
        # Read positions belong to the reading task: drop ours from the reader itself.
        w.app.broker.forget_control_reader()


def cancel_swallowed() -> bool:
    """True if this task was cancelled but the CancelledError never reached it.

    On Python 3.11 ``asyncio.wait_for`` returns the inner result instead of raising when
    the inner future completes in the same loop step as the cancel (a broker wake-up racing
    ``stop()``); a loop that only trusted the exception would then run forever.
    """
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
