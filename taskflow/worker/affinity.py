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
buffers) could do. Such work belongs on the process pool (``--pool processes``), which this
option does not apply to. Programs that a task starts do not inherit the CPU: an audit hook
(``sys.addaudithook``) sees ``subprocess.Popen``, ``os.posix_spawn``, ``os.fork``,
``os.system`` and the ``exec`` and ``spawn`` functions of :mod:`os` coming (and, on
uvloop's loop, which makes a child in C, the event taskflow's loop raises first:
:data:`~taskflow.kernel.loop.SUBPROCESS_EVENT`), and gives the
calling thread the process's former CPUs before the child is made; a body's thread is
pinned again before its next body, the loop's thread in the loop's next step.

Without the option, an idle body thread is still woken on the CPU of the thread that
wakes it (the loop's, as a rule): see :func:`place_beside`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import fcntl
import logging
import os
import stat
import sys
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..kernel.loop import SUBPROCESS_EVENT

__all__ = [
    "AFFINITY_CHOICES",
    "CpuClaim",
    "beside_supported",
    "check_choice",
    "claim_cpu",
    "command_line_default",
    "current_cpu",
    "pin_process",
    "place_beside",
    "repin_current_thread",
    "supported",
    "thread_ids",
]

AFFINITY_CHOICES = ("off", "auto")

log = logging.getLogger("taskflow.worker")


def check_choice(choice: str, pool: str, name: str = "cpu_affinity") -> str:
    """``choice`` in lower case; ValueError for an unknown one, or ``auto`` with the
    process pool (its children would all inherit the one CPU). ``name`` is how the caller
    spells the option: ``cpu_affinity`` (Python) or ``--cpu-affinity`` (command line)."""
    value = choice.lower()
    if value not in AFFINITY_CHOICES:
        choices = ", ".join(AFFINITY_CHOICES)
        raise ValueError(f"{name} must be one of {choices}, not {choice!r}")
    if value == "auto" and pool != "threads":
        auto = f"{name} auto" if name.startswith("--") else f"{name}='auto'"
        raise ValueError(
            f"{auto} applies to the thread pool only: the process pool's children "
            "would all share the one CPU"
        )
    return value


def usable_cpus() -> int:
    """How many CPUs this process may run on (``taskset``, cgroup cpusets), at least 1."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def command_line_default(processes: int, pool: str) -> str:
    """``taskflow worker``'s choice when ``--cpu-affinity`` is not given: ``auto`` where
    it costs nothing, else ``off``.

    It costs nothing where the worker runs at least as many processes (``-P N``) as there
    are CPUs it may use, on the thread pool: every CPU then has a worker process, so
    keeping each process on one CPU takes no CPU away from the worker as a whole (what it
    loses, one process running C code on two CPUs at once, the other processes make up),
    and the lock hand-overs between its threads stay on one CPU. With fewer processes than
    CPUs a process's threads could use the CPUs no process has, and ``auto`` stays a
    choice to make (``docs/guide.md``, "CPU affinity").
    """
    if pool.lower() != "threads" or not supported():
        return "off"
    return "auto" if processes >= usable_cpus() else "off"


def supported() -> bool:
    """Whether this platform lets a process choose its CPUs (Linux)."""
    return hasattr(os, "sched_setaffinity") and Path("/proc/self/task").is_dir()


def thread_ids() -> list[int]:
    """The system's ids of this process's threads (``/proc/self/task``; Linux)."""
    return [int(name) for name in os.listdir("/proc/self/task")]


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
    """A CPU held by this process: its lock file's descriptor, the CPUs each thread was
    allowed before it was pinned (given back by :meth:`release`), the process's CPUs before
    (what a program started by a task gets), and the threads unpinned to start one."""

    cpu: int
    fd: int
    before: dict[int, set[int]] = field(default_factory=dict)
    allowed: set[int] = field(default_factory=set)
    unpinned: set[int] = field(default_factory=set)

    def release(self) -> None:
        """Let the threads run on their former CPUs again, then give up the claim."""
        global _active  # the one claim in force, read by the audit hook
        if _active is self:
            _active = None
        for tid, cpus in self.before.items():
            with contextlib.suppress(OSError):  # a thread that ended meanwhile
                os.sched_setaffinity(tid, cpus)
        self.before = {}
        if self.fd >= 0:
            os.close(self.fd)  # closing the descriptor drops the flock
            self.fd = -1


# The claim in force in this process (None when it is not pinned), read by _audit.
_active: CpuClaim | None = None
_hooked = False
# Audit events raised just before a child process is made (or the process replaced).
_SPAWNS = frozenset(
    {"subprocess.Popen", "os.posix_spawn", "os.fork", "os.forkpty", "os.system", "os.exec"}
    | {"os.spawn", "pty.spawn", SUBPROCESS_EVENT}  # the last: uvloop's loop starts a program
)


def _audit(event: str, args: tuple[Any, ...]) -> None:
    # Called for every audited event of the process: return at once for the others. An
    # exception raised here would stop the program from starting: none may escape.
    claim = _active
    if claim is None or event not in _SPAWNS:
        return
    try:
        os.sched_setaffinity(0, claim.allowed)  # this thread: the child inherits it
        claim.unpinned.add(threading.get_native_id())
        loop = asyncio.get_running_loop()
    except Exception:  # a body's thread (no loop), or the call failed
        return  # a body's thread is pinned again before its next body
    with contextlib.suppress(Exception):
        loop.call_soon(repin_current_thread)  # after the step that starts the child


def repin_current_thread() -> None:
    """Pin the calling thread again if it was unpinned to start a program (cheap when not:
    a body's thread calls it before every body)."""
    claim = _active
    if claim is None or not claim.unpinned:
        return
    tid = threading.get_native_id()
    if tid in claim.unpinned:
        claim.unpinned.discard(tid)
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, {claim.cpu})


# --- waking a body's thread beside the thread that wakes it (the default) ----------------

_getcpu: Callable[[], int] | None = None
_getcpu_looked_up = False


def current_cpu() -> int | None:
    """The CPU the calling thread runs on now (the C library's ``sched_getcpu``, a call
    without a system call on Linux); None where unknown."""
    global _getcpu, _getcpu_looked_up
    if not _getcpu_looked_up:
        _getcpu_looked_up = True
        with contextlib.suppress(OSError, AttributeError):
            _getcpu = ctypes.CDLL(None).sched_getcpu
    if _getcpu is None:
        return None
    cpu = int(_getcpu())
    return cpu if cpu >= 0 else None


def beside_supported(allowed: set[int]) -> bool:
    """Whether :func:`place_beside` can work here: threads choose their CPUs, a thread can
    tell which CPU it runs on, and ``allowed`` (the process's CPUs) holds several."""
    return len(allowed) > 1 and supported() and current_cpu() is not None


def place_beside(tid: int) -> set[int] | None:
    """Before waking the idle thread ``tid``: let it run only on the CPU the calling thread
    runs on now, so that it does not wake on another CPU. Returns the thread's CPUs
    before, which it gives itself back before it runs anything else; None if nothing was
    done.

    Woken while the waking thread holds the interpreter lock, a thread is put on a CPU
    that is idle, i.e. another one; it then waits there for the lock, and the lock and the
    outcome go back and forth between the two CPUs (on a virtual machine, each crossing a
    wake-up of a virtual CPU). Woken on the waking thread's CPU, it runs as soon as that
    thread waits, and stays there unless the system moves it: when this was added
    (2026-12-03), a pickup of a sync task took 0.43-0.48 ms at the median against
    0.55-0.69 without (``python -m bench.pickup_cost --sync``; ``docs/guide.md``, "CPU
    affinity", has later figures). The body itself never runs with fewer CPUs: libraries it
    loads, and threads and programs it starts, see the CPUs the thread had. If another
    process keeps that CPU busy, the woken thread waits for its turn there (the system
    gives a waking thread one soon) before it can move.
    """
    cpu = current_cpu()
    if cpu is None or tid <= 0:  # 0 would be the calling thread itself
        return None
    try:
        before = os.sched_getaffinity(tid)
        if cpu not in before or len(before) < 2:
            return None
        os.sched_setaffinity(tid, {cpu})
    except OSError:
        return None
    return before


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
        claim = claim_cpu(allowed, claims_dir(), current_cpu())
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
    for tid in thread_ids():
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
    global _active, _hooked  # one claim per process; one hook for good
    claim.allowed = set(allowed)
    _active = claim
    if not _hooked:
        sys.addaudithook(_audit)  # a hook cannot be removed: it idles once released
        _hooked = True
    log.info("worker process %d pinned to CPU %d", os.getpid(), claim.cpu)
    return claim
