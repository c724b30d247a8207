"""Keeping a worker process's threads on one CPU (``--cpu-affinity auto``; off by default).

The threads of one process share one interpreter lock. Where a sync body runs on a thread
beside the event loop, the lock changes hands several times per task; with the threads
free to run on different CPUs, each change wakes a thread on another CPU, which then waits
for the lock it was woken for. Kept on one CPU, the same changes are plain switches on
that CPU: ``python -m bench.pools`` measures the difference (``docs/performance.md``).

A worker process claims a CPU of its own among those it may run on: one lock file per
CPU, held with ``flock`` for as long as the process pins itself, in a directory of the
user's (``$XDG_RUNTIME_DIR`` or the temporary directory). The processes of ``-P N`` and
workers started apart thus take different CPUs; the lock goes with the process, however
it ends. A worker that finds every CPU claimed (more worker processes than CPUs) is not
pinned. Claims are per machine, or per container where containers have their own
temporary directories.

What it costs: the process's threads no longer run on several CPUs at once, which only
code that releases the interpreter lock (C extensions, compression, hashing of large
buffers) could do; and programs a task starts (``subprocess``) inherit the CPU. Such work
belongs on the process pool (``--pool processes``), which this option does not apply to.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import stat
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["AFFINITY_CHOICES", "CpuClaim", "check_choice", "claim_cpu", "pin_process", "supported"]

AFFINITY_CHOICES = ("off", "auto")

log = logging.getLogger("taskflow.worker")


def check_choice(choice: str, pool: str) -> str:
    """``choice`` in lower case; ValueError for an unknown one, or ``auto`` with the
    process pool (its children would all inherit the one CPU)."""
    value = choice.lower()
    if value not in AFFINITY_CHOICES:
        choices = ", ".join(AFFINITY_CHOICES)
        raise ValueError(f"cpu_affinity must be one of {choices}, not {choice!r}")
    if value == "auto" and pool != "threads":
        raise ValueError(
            "cpu_affinity='auto' applies to the thread pool only: the process pool's children "
            "would all share the one CPU"
        )
    return value


def supported() -> bool:
    """Whether this platform lets a process choose its CPUs (Linux)."""
    return hasattr(os, "sched_setaffinity") and Path("/proc/self/task").is_dir()


def claims_dir() -> Path:
    """The directory of the CPU lock files: the user's own, created private (0700)."""
    base = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
    path = Path(base) / f"taskflow-cpus-{os.getuid()}"
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o700)
    info = path.lstat()
    # In a shared temporary directory, a directory of that name made by someone else (or
    # a link to one) is not used.
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        raise PermissionError(f"{path} is not a directory of this user's")
    return path


@dataclass
class CpuClaim:
    """A CPU held by this process: its lock file's descriptor, and the CPUs each thread
    was allowed before it was pinned (given back by :meth:`release`)."""

    cpu: int
    fd: int
    before: dict[int, set[int]] = field(default_factory=dict)

    def release(self) -> None:
        """Let the threads run on their former CPUs again, then give up the claim."""
        for tid, cpus in self.before.items():
            with contextlib.suppress(OSError):  # a thread that ended meanwhile
                os.sched_setaffinity(tid, cpus)
        self.before = {}
        if self.fd >= 0:
            os.close(self.fd)  # closing the descriptor drops the flock
            self.fd = -1


def _current_cpu() -> int | None:
    """The CPU this process last ran on (``/proc/self/stat``, field 39)."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[36])
    except (OSError, IndexError, ValueError):
        return None


def claim_cpu(allowed: set[int], directory: Path, start: int | None = None) -> CpuClaim | None:
    """Take the lock of one CPU of ``allowed`` not held by another process, trying
    ``start`` first, then the rest in order; None if every one is held."""
    order = sorted(allowed)
    if start in allowed:
        at = order.index(start)
        order = order[at:] + order[:at]
    for cpu in order:
        fd = os.open(directory / f"cpu-{cpu}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        except BaseException:
            os.close(fd)
            raise
        return CpuClaim(cpu, fd)
    return None


def pin_process() -> CpuClaim | None:
    """Claim a CPU (see the module's docstring) and pin every thread of this process to
    it; threads started later inherit it. None, with the reason logged, if the process
    stays as it is: one CPU allowed only, every CPU claimed, or no support here."""
    if not supported():
        log.info("--cpu-affinity: not supported on this platform; the worker is not pinned")
        return None
    allowed = os.sched_getaffinity(0)
    if len(allowed) < 2:
        return None  # nothing to choose: the process runs on one CPU already
    try:
        claim = claim_cpu(allowed, claims_dir(), _current_cpu())
    except OSError as exc:
        log.warning("--cpu-affinity: cannot claim a CPU (%s); the worker is not pinned", exc)
        return None
    if claim is None:
        log.info(
            "--cpu-affinity: each of the %d CPUs is claimed by another worker process; "
            "this one is not pinned",
            len(allowed),
        )
        return None
    for name in os.listdir("/proc/self/task"):
        tid = int(name)
        try:
            before = os.sched_getaffinity(tid)
            os.sched_setaffinity(tid, {claim.cpu})
        except OSError:
            continue  # the thread ended meanwhile
        claim.before[tid] = before
    if not claim.before:
        claim.release()
        log.warning("--cpu-affinity: no thread could be pinned; the worker is not pinned")
        return None
    log.info("worker process %d pinned to CPU %d", os.getpid(), claim.cpu)
    return claim
