"""The ``-P`` supervisor of ``taskflow worker``: N worker processes, restarted when they die.

It shares the signal handling and stop policy of a single worker process
(:mod:`taskflow.worker.signals`): the first SIGTERM or SIGINT stops gracefully; a SIGINT
after that stops now; anything else while stopping is ignored.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from ..worker.foreground import EXIT_FAILED, EXIT_OK, EXIT_USAGE, IDLE_CHECK
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


@dataclass
class _Slot:
    index: int
    proc: subprocess.Popen[bytes] | None = None
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
    ) -> None:
        if processes < 1:
            raise ValueError(f"processes must be at least 1, got {processes}")
        self.command = list(command)
        self.grace = grace
        self.env = dict(os.environ if env is None else env)
        self.backoff = backoff
        self.clock = clock
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
                self._spawn(slot)
            supervisor_log.info(
                "supervisor %d running %d worker processes", os.getpid(), len(self.slots)
            )
            while True:
                for signum, action in control.wait(self._next_wait()):
                    self._forward(action, signal_name(signum))
                self._reap(control)
                if control.policy.stopping and self._all_exited():
                    return self._exit_status()
                self._restart_due()
                self._kill_overdue()
        finally:
            self._terminate_leftovers()

    # -- children ----------------------------------------------------------------------
    def _spawn(self, slot: _Slot) -> None:
        env = dict(self.env)
        env[SUPERVISOR_ENV] = str(os.getpid())
        env[WORKER_INDEX_ENV] = str(slot.index)
        slot.proc = subprocess.Popen(
            self.command, env=env, stdin=subprocess.DEVNULL, process_group=0
        )
        slot.started = self.clock()
        slot.restart_at = None
        supervisor_log.info("started worker process %d (pid %d)", slot.index, slot.proc.pid)

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

    def _restart_due(self) -> None:
        now = self.clock()
        for slot in self.slots:
            if slot.proc is None and slot.restart_at is not None and slot.restart_at <= now:
                self._spawn(slot)

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


def _describe_exit(code: int) -> str:
    if code < 0:
        return f"was killed by {signal_name(-code)}"
    return f"exited with status {code}"
