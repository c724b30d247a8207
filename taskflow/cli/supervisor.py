"""The ``-P`` supervisor of ``taskflow worker``: N worker processes, restarted when they die.

It shares the signal handling and stop policy of a single worker process
(:mod:`taskflow.worker.signals`): the first SIGTERM or SIGINT stops gracefully; a SIGINT
after that stops now; anything else while stopping is ignored.

A worker process is forked from the supervisor when it can be: ``os.fork`` exists and the
supervisor runs no other thread (with ``--metrics-port`` it serves on one). The supervisor
has imported taskflow already, so a forked worker starts with that done and imports only
the app's module, where a started one (``command``) starts Python and imports it all again.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import NoReturn, Protocol

from ..worker.foreground import EXIT_FAILED, EXIT_OK, EXIT_USAGE, IDLE_CHECK, exit_process
from ..worker.signals import GRACEFUL, HARD, StopControl, signal_name

__all__ = ["SUPERVISOR_ENV", "WORKER_INDEX_ENV", "Supervisor"]

supervisor_log = logging.getLogger("taskflow.supervisor")

# Set in a supervised worker's environment: the supervisor's pid, and the process's slot.
SUPERVISOR_ENV = "TASKFLOW_SUPERVISOR_PID"
WORKER_INDEX_ENV = "TASKFLOW_WORKER_INDEX"
# Restart backoff: doubles for a process that keeps dying young, reset once it lived a while.
RESTART_BACKOFF = 0.5
MAX_RESTART_BACKOFF = 10.0
STABLE_AFTER = 10.0
# A supervised worker that outlives its grace by this much after a stop is killed.
KILL_AFTER = 10.0
# The signals the supervisor handles and forwards: blocked while it forks, see _fork.
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class _Process(Protocol):
    """What the supervisor uses of a worker process: a ``Popen`` or a :class:`_Forked`."""

    @property
    def pid(self) -> int: ...

    def poll(self) -> int | None: ...

    def send_signal(self, sig: int) -> None: ...

    def kill(self) -> None: ...

    def terminate(self) -> None: ...


class _Forked:
    """A worker process forked by the supervisor, with the ``Popen`` methods it uses."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        """The exit status (negative: the signal that killed it) once it ended, reaped."""
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        # Until it is reaped the pid stays ours (a zombie): it cannot be another process.
        if self.returncode is None:
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)


@dataclass
class _Slot:
    index: int
    proc: _Process | None = None
    started: float = 0.0
    failures: int = 0
    restart_at: float | None = None
    exit_code: int | None = None


class Supervisor:
    """Runs ``processes`` copies of ``command`` and keeps them running until told to stop.

    A process that dies unexpectedly is restarted after a backoff (logged). SIGTERM/SIGINT
    are forwarded as SIGTERM (graceful); a second SIGINT is forwarded as SIGINT, which a
    worker that is already stopping takes as "stop now". Children run in their own process
    group, so a Ctrl-C at a terminal reaches them once, through the supervisor, and they
    watch the supervisor's pid so they stop if it disappears. A child that exits with
    status 2 (a configuration error) stops the whole group instead of being restarted.

    With ``fork`` a worker process is forked rather than started, when possible (see the
    module). The child is set up as a started one would be -- its own process group, stdin
    on /dev/null, the environment ``command`` would get, the signal handlers from before
    the supervisor's -- then runs ``fork``, which must undo whatever else the supervisor
    set up (logging) and run the worker as ``command`` would. Its exit status is that of
    the ``SystemExit`` it raises, 0 when it returns, 1 with a traceback for an exception.
    """

    def __init__(
        self,
        command: Sequence[str],
        processes: int,
        grace: float,
        *,
        env: Mapping[str, str] | None = None,
        backoff: float = RESTART_BACKOFF,
        clock: Callable[[], float] = time.monotonic,
        fork: Callable[[], object] | None = None,
    ) -> None:
        if processes < 1:
            raise ValueError(f"processes must be at least 1, got {processes}")
        self.command = list(command)
        self.grace = grace
        self.env = dict(os.environ if env is None else env)
        self.backoff = backoff
        self.clock = clock
        self.fork = fork if hasattr(os, "fork") else None
        self.slots = [_Slot(index) for index in range(1, processes + 1)]
        self._fatal: int | None = None
        self._stop_deadline: float | None = None
        self._killed = False

    def run(self, control: StopControl) -> int:
        """Supervise until every child has exited after a stop; return the exit status.

        ``control`` must be entered and should wake on SIGCHLD for prompt restarts.
        """
        try:
            for slot in self.slots:
                self._spawn(slot, control)
            supervisor_log.info(
                "supervisor %d running %d worker processes", os.getpid(), len(self.slots)
            )
            while True:
                for signum, action in control.wait(self._next_wait()):
                    self._forward(action, signal_name(signum))
                self._reap(control)
                if control.policy.stopping and self._all_exited():
                    return self._exit_status()
                self._restart_due(control)
                self._kill_overdue()
        finally:
            self._terminate_leftovers()

    # -- children ----------------------------------------------------------------------
    def _spawn(self, slot: _Slot, control: StopControl) -> None:
        env = dict(self.env)
        env[SUPERVISOR_ENV] = str(os.getpid())
        env[WORKER_INDEX_ENV] = str(slot.index)
        # Forking with another thread running could copy a lock it holds, held for good.
        if self.fork is not None and threading.active_count() == 1:
            slot.proc = self._fork(self.fork, env, control)
            how = "forked"
        else:
            slot.proc = subprocess.Popen(
                self.command, env=env, stdin=subprocess.DEVNULL, process_group=0
            )
            how = "started"
        slot.started = self.clock()
        slot.restart_at = None
        supervisor_log.info("%s worker process %d (pid %d)", how, slot.index, slot.proc.pid)

    def _fork(
        self, run: Callable[[], object], env: Mapping[str, str], control: StopControl
    ) -> _Forked:
        for stream in (sys.stdout, sys.stderr):  # or the child prints what is buffered again
            with contextlib.suppress(Exception):
                stream.flush()
        # A stop signal that reached the new child before it dropped the supervisor's
        # handlers would be recorded in the child's copy of them and lost: blocked until
        # then, it is delivered to the child's own handling, as for a started process.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
        try:
            pid = os.fork()
            if pid == 0:
                _run_forked(run, env, control, mask)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        # Also set here (like a shell): a Ctrl-C right after the fork must not reach it.
        with contextlib.suppress(OSError):
            os.setpgid(pid, pid)
        return _Forked(pid)

    def _reap(self, control: StopControl) -> None:
        for slot in self.slots:
            code = slot.proc.poll() if slot.proc is not None else None
            if slot.proc is None or code is None:
                continue
            pid, slot.proc = slot.proc.pid, None
            if control.policy.stopping:
                slot.exit_code = code
                supervisor_log.info(
                    "worker process %d (pid %d) %s", slot.index, pid, _describe_exit(code)
                )
            elif code == EXIT_USAGE:
                supervisor_log.error(
                    "worker process %d (pid %d) exited with status 2 "
                    "(configuration error); stopping",
                    slot.index,
                    pid,
                )
                self._fatal = EXIT_USAGE
                slot.exit_code = code
                if control.policy.request(GRACEFUL) is not None:
                    self._forward(GRACEFUL, "configuration error")
            else:
                self._schedule_restart(slot, pid, code)

    def _schedule_restart(self, slot: _Slot, pid: int, code: int) -> None:
        now = self.clock()
        slot.failures = slot.failures + 1 if now - slot.started < STABLE_AFTER else 1
        delay = min(self.backoff * 2 ** (slot.failures - 1), MAX_RESTART_BACKOFF)
        slot.restart_at = now + delay
        supervisor_log.warning(
            "worker process %d (pid %d) %s; restarting in %.1fs",
            slot.index,
            pid,
            _describe_exit(code),
            delay,
        )

    def _restart_due(self, control: StopControl) -> None:
        now = self.clock()
        for slot in self.slots:
            if slot.proc is None and slot.restart_at is not None and slot.restart_at <= now:
                self._spawn(slot, control)

    def _forward(self, action: str, reason: str) -> None:
        for slot in self.slots:
            slot.restart_at = None  # a stop cancels pending restarts
        now = self.clock()
        deadline = now + KILL_AFTER + (0.0 if action == HARD else self.grace)
        self._stop_deadline = min(self._stop_deadline or deadline, deadline)
        signum = signal.SIGINT if action == HARD else signal.SIGTERM
        supervisor_log.info(
            "%s (%s): sending %s to the worker processes",
            "stopping now" if action == HARD else "stopping gracefully",
            reason,
            signal_name(signum),
        )
        for slot in self.slots:
            if slot.proc is not None:
                with contextlib.suppress(ProcessLookupError):
                    slot.proc.send_signal(signum)

    def _kill_overdue(self) -> None:
        if self._stop_deadline is None or self._killed or self.clock() < self._stop_deadline:
            return
        self._killed = True
        for slot in self.slots:
            if slot.proc is not None:
                supervisor_log.error(
                    "worker process %d (pid %d) did not stop in time; killing it",
                    slot.index,
                    slot.proc.pid,
                )
                with contextlib.suppress(ProcessLookupError):
                    slot.proc.kill()

    def _terminate_leftovers(self) -> None:
        # Only reached with live children if the loop itself failed: do not orphan them.
        for slot in self.slots:
            if slot.proc is not None and slot.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    slot.proc.terminate()

    # -- bookkeeping -------------------------------------------------------------------
    def _next_wait(self) -> float:
        due = [slot.restart_at for slot in self.slots if slot.restart_at is not None]
        if self._stop_deadline is not None and not self._killed:
            due.append(self._stop_deadline)
        if not due:
            return IDLE_CHECK
        return max(0.0, min(IDLE_CHECK, min(due) - self.clock()))

    def _all_exited(self) -> bool:
        return all(slot.proc is None for slot in self.slots)

    def _exit_status(self) -> int:
        if self._fatal is not None:
            return self._fatal
        # A child killed by the SIGTERM we forwarded before it installed its handlers
        # had nothing running yet: that is a clean stop too.
        clean = (EXIT_OK, -signal.SIGTERM)
        codes = [slot.exit_code for slot in self.slots if slot.exit_code is not None]
        return EXIT_OK if all(code in clean for code in codes) else EXIT_FAILED


def _run_forked(
    run: Callable[[], object],
    env: Mapping[str, str],
    control: StopControl,
    mask: Iterable[int],
) -> NoReturn:
    """The forked child: set up as a started worker process, run it, never return."""
    code = EXIT_FAILED
    # The exit handlers registered so far are the supervisor's; those the worker registers
    # (its app's module, say) run at its end, as in a started process.
    atexit._clear()  # noqa: SLF001 -- the supervisor's exit handlers are not the worker's
    try:
        os.setpgid(0, 0)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.close(devnull)
        os.environ.clear()
        os.environ.update(env)
        control.restore_handlers()
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        run()
        code = EXIT_OK
    except SystemExit as exc:
        code = _system_exit_status(exc)
    except BaseException:
        traceback.print_exc()
    finally:
        with contextlib.suppress(BaseException):
            atexit._run_exitfuncs()  # noqa: SLF001 -- what a normal exit runs
        # Not a normal exit: the supervisor's frames below this one must not run here.
        exit_process(code)


def _system_exit_status(exc: SystemExit) -> int:
    """The status the interpreter exits with for ``exc`` (printing a message it carries)."""
    if exc.code is None:
        return EXIT_OK
    if isinstance(exc.code, int):
        return exc.code
    sys.stderr.write(f"{exc.code}\n")
    return EXIT_FAILED


def _describe_exit(code: int) -> str:
    if code < 0:
        return f"was killed by {signal_name(-code)}"
    return f"exited with status {code}"
