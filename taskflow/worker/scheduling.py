"""The system's scheduling policy for a worker process's threads (``--scheduling``; Linux).

``batch`` (the default of ``taskflow worker`` where the system has it) puts the process's
threads under ``SCHED_BATCH``: the same fair share of the CPUs as before, at the same nice
value, but a thread woken up does not take the CPU at once from the thread running there;
it runs when that one waits or its time slice ends. A worker's threads wake each other
all the time: the loop hands a sync body to a thread and the outcome comes back, the
threads take turns at the interpreter lock, and every reply from the broker wakes the
thread that waits for it. Under the default policy each such wake-up pre-empts whatever
runs on that CPU -- another thread of the worker, which then waits for the lock the woken
one needs, or the broker's own server on the same machine, while the other CPU sits idle
waiting for that server's replies. ``python -m bench.pools`` measures the difference
(``docs/performance.md``, "Sync bodies under SCHED_BATCH").

What it costs: a worker's thread woken while the CPU is busy waits for the running
thread's time slice (a few milliseconds, as a rule) instead of running at once; on an idle
CPU nothing changes. Threads with another policy than the default one (set with ``chrt``,
say) are left as they are, and :meth:`BatchPolicy.release` gives each thread switched its
former policy back. Programs a task starts, and the process pool's children, inherit the
policy of the thread that starts them, as they inherit its nice value.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from .affinity import thread_ids

__all__ = [
    "SCHEDULING_CHOICES",
    "BatchPolicy",
    "check_scheduling",
    "command_line_default",
    "supported",
    "use_batch",
]

SCHEDULING_CHOICES = ("batch", "normal")

log = logging.getLogger("taskflow.worker")


def supported() -> bool:
    """Whether this system has ``SCHED_BATCH`` and lets a thread's policy be set (Linux)."""
    return (
        hasattr(os, "SCHED_BATCH")
        and hasattr(os, "sched_setscheduler")
        and Path("/proc/self/task").is_dir()
    )


def command_line_default() -> str:
    """``taskflow worker``'s choice when ``--scheduling`` is not given: ``batch`` where the
    system has it, else ``normal``."""
    return "batch" if supported() else "normal"


def check_scheduling(choice: object) -> str:
    """``choice`` (``App.run_worker``'s ``scheduling``) in lower case; ValueError for an
    unknown one. The command line checks its own (a ``click.Choice``)."""
    if isinstance(choice, str) and choice.lower() in SCHEDULING_CHOICES:
        return choice.lower()
    choices = ", ".join(SCHEDULING_CHOICES)
    raise ValueError(f"scheduling must be one of {choices}, not {choice!r}")


@dataclass
class BatchPolicy:
    """The threads this process switched to ``SCHED_BATCH``, to switch back."""

    switched: list[int] = field(default_factory=list)

    def release(self) -> None:
        """Give the switched threads the default policy back (threads started since
        inherited the batch policy and keep it; a worker's own end with it)."""
        for tid in self.switched:
            with contextlib.suppress(OSError):  # a thread that ended meanwhile
                os.sched_setscheduler(tid, os.SCHED_OTHER, os.sched_param(0))
        self.switched = []


def use_batch() -> BatchPolicy | None:
    """Put every thread of this process that runs under the default policy under
    ``SCHED_BATCH``; threads they start later inherit it. None, with the reason logged,
    where the system has no such policy or no thread was switched (each refused, or each
    under another policy already)."""
    if not supported():
        log.info("--scheduling batch: not supported on this platform; the policy is unchanged")
        return None
    policy = BatchPolicy()
    refused: OSError | None = None
    for tid in thread_ids():
        try:
            if os.sched_getscheduler(tid) != os.SCHED_OTHER:
                continue  # chosen by someone (chrt): theirs to keep
            os.sched_setscheduler(tid, os.SCHED_BATCH, os.sched_param(0))
        except ProcessLookupError:
            continue  # the thread ended meanwhile
        except OSError as exc:  # a sandbox that refuses the call
            refused = exc
            continue
        policy.switched.append(tid)
    if refused is not None and not policy.switched:
        log.warning("--scheduling batch: the policy cannot be set (%s); unchanged", refused)
        return None
    if not policy.switched:
        log.info("--scheduling batch: the threads were given another policy; left as they are")
        return None
    log.info("worker process %d runs its threads under SCHED_BATCH", os.getpid())
    return policy
