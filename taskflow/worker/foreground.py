"""A worker (or a beat) in the foreground of its process: connecting, signals, exit status.

``taskflow worker``, ``taskflow beat`` and ``App.run_worker`` all run through :func:`serve`,
so they connect, stop and end the same way:

* Connecting retries with backoff for ``connect_timeout`` seconds (each failed attempt is
  one WARNING line naming the URL, password masked), then gives up with a
  :class:`~taskflow.errors.BrokerError`: a worker started before its broker waits for it.
* Signals (:mod:`.signals`): the first SIGTERM or SIGINT stops gracefully; a SIGINT after
  that stops now; anything else while stopping is ignored.
* A worker whose stage died (``Worker.fatal``) is stopped and the status is
  :data:`EXIT_CRASHED`, so a supervisor (``-P``, systemd, Kubernetes) restarts the process.
* Python cannot interrupt a thread, so a sync task body that ignores its cancellation keeps
  its thread after the worker stopped, and the interpreter would wait for it at exit. Its
  message was not handed back (it goes back only once the body can no longer run), so
  the process ends at once instead (``end_process``): the broker redelivers the message
  when its lease expires.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import math
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from typing import NoReturn, Protocol

from ..errors import BrokerError, WorkerCrashed, mask_url
from ..kernel import Kernel
from .affinity import pin_process
from .scheduling import use_batch
from .signals import GRACEFUL, HARD, StopControl, signal_name

__all__ = [
    "EXIT_CRASHED",
    "EXIT_FAILED",
    "EXIT_OK",
    "EXIT_USAGE",
    "IDLE_CHECK",
    "YOUNG_THRESHOLD",
    "Runner",
    "check_gc_threshold",
    "connect",
    "exit_process",
    "run_foreground",
    "run_worker",
    "serve",
    "young_threshold",
]

# The lines operators know from ``taskflow worker``, the same for ``App.run_worker``.
log = logging.getLogger("taskflow.cli")

# Exit statuses of a foreground process.
EXIT_OK = 0
EXIT_FAILED = 1  # could not run: the broker stayed unreachable, an operation failed
EXIT_USAGE = 2  # bad usage or configuration
EXIT_CRASHED = 70  # a worker stage died (EX_SOFTWARE in sysexits.h): restart me

YOUNG_THRESHOLD = 10_000
"""The garbage collector's first threshold while a foreground worker serves (Python's is
700): see :func:`young_threshold`."""

# How often the loop re-checks what no signal announces (a vanished supervisor, a crash).
IDLE_CHECK = 0.5
# Backoff between connection attempts: doubles from the first to the last value.
CONNECT_BACKOFF = 0.5
MAX_CONNECT_BACKOFF = 5.0
# How long threads left after a stop get to end before they count as stranded.
STRANDED_AFTER = 0.5


class Runner(Protocol):
    """What the foreground loop runs: a :class:`~taskflow.worker.Worker` or a beat."""

    @property
    def fatal(self) -> BaseException | None:
        """The exception that killed one of its stages, if one died."""

    def start(self) -> object:
        """Start in the background; returns once running."""

    def stop(self, timeout: float = 30.0) -> None:
        """Graceful stop; returns once stopped."""

    def stop_now(self) -> None:
        """Hard stop; returns once stopped."""


# -- connecting ----------------------------------------------------------------------------
def connect(
    kernel: Kernel,
    control: StopControl,
    timeout: float,
    *,
    clock: Callable[[], float] = time.monotonic,
) -> bool:
    """Connect the app's broker and result store, retrying for up to ``timeout`` seconds.

    Returns False if a stop signal came first. Raises :class:`BrokerError` naming the URL
    (password masked) once ``timeout`` seconds passed without a connection; errors other
    than a :class:`BrokerError` (a bad option) are not retried.
    """
    target = _target(kernel)
    deadline = clock() + timeout
    delay = CONNECT_BACKOFF
    attempt = 0
    error = ""
    while True:
        attempt += 1
        # With no time to retry, the one attempt is bounded by the backend's own timeout.
        outcome = _attempt(kernel, control, deadline if timeout > 0 else math.inf, clock)
        if outcome is None or outcome is _STOPPED:
            if outcome is None and attempt > 1:
                log.info("connected to %s (attempt %d)", target, attempt)
            return outcome is None
        # An attempt cut short by the deadline says less than the error before it.
        error = error if outcome is _NO_ANSWER and error else outcome
        remaining = deadline - clock()
        if remaining <= 0:
            raise BrokerError(
                f"cannot connect to {target}: gave up after {timeout:g}s "
                f"({attempt} attempt{'s' if attempt > 1 else ''}); last error: {error}"
            )
        pause = min(delay, remaining)
        log.warning(
            "cannot connect to %s (attempt %d: %s); retrying in %.1fs, giving up in %gs",
            target,
            attempt,
            outcome,
            pause,
            round(remaining, 1),
        )
        if _pause(control, pause, clock):
            return False
        delay = min(delay * 2, MAX_CONNECT_BACKOFF)


_STOPPED = "stopped"
_NO_ANSWER = "no answer in time"


def _target(kernel: Kernel) -> str:
    broker, results = mask_url(kernel.broker.url), mask_url(kernel.results.url)
    return broker if results == broker else f"{broker} (results {results})"


def _attempt(
    kernel: Kernel, control: StopControl, deadline: float, clock: Callable[[], float]
) -> str | None:
    """One connection attempt, bounded by ``deadline`` and abandoned on a stop signal:
    None when connected, :data:`_STOPPED`, or the reason it failed."""
    done: Future[None] = kernel.loop.submit(kernel.connect())
    done.add_done_callback(lambda _: control.notify())
    while not done.done():
        if _stop_signalled(control, min(IDLE_CHECK, deadline - clock())):
            done.cancel()
            return _STOPPED
        if not done.done() and clock() >= deadline:
            done.cancel()
            return _NO_ANSWER
    try:
        done.result()
    except BrokerError as exc:
        return str(exc)
    return None


def _pause(control: StopControl, seconds: float, clock: Callable[[], float]) -> bool:
    """Sleep ``seconds`` unless a stop signal comes first (then True)."""
    end = clock() + seconds
    while True:
        if _stop_signalled(control, end - clock()):
            return True
        if clock() >= end:
            return False


def _stop_signalled(control: StopControl, timeout: float) -> bool:
    """One wait for a wakeup (any wakeup ends it); True if it was a stop signal."""
    for signum, _action in control.wait(timeout):
        log.info("stopping (%s) before the worker started", signal_name(signum))
        return True
    return False


# -- running -------------------------------------------------------------------------------
def run_foreground(
    runner: Runner,
    control: StopControl,
    grace: float,
    supervisor_pid: int | None = None,
    *,
    end_process: bool = False,
) -> int:
    """Start ``runner`` and block until a signal, a vanished supervisor or a crash stops it.

    Returns :data:`EXIT_OK`, or :data:`EXIT_CRASHED` when a stage of the runner died. With
    ``end_process``, task threads still running after the stop end the process
    (``os._exit``) with that status.
    """
    before = set(threading.enumerate())
    runner.start()
    loop = _Foreground(runner, control, grace)
    while not loop.stopped.is_set():
        for signum, action in control.wait(IDLE_CHECK):
            _log_stop(action, signal_name(signum), grace)
            loop.stop(action)
        loop.check_crash()
        if supervisor_pid is not None and os.getppid() != supervisor_pid:
            loop.stop_for(f"supervisor {supervisor_pid} is gone")
    for helper in loop.helpers:
        helper.join()
    code = EXIT_CRASHED if runner.fatal is not None else EXIT_OK
    stranded = _stranded(before)
    if stranded:
        log.warning(
            "%d task thread(s) still running after the stop (%s); %s",
            len(stranded),
            ", ".join(sorted(t.name for t in stranded)),
            "ending the process: their messages are redelivered once their leases expire"
            if end_process
            else "the process cannot exit before they return",
        )
        if end_process:
            exit_process(code)
    return code


def _stranded(before: set[threading.Thread]) -> list[threading.Thread]:
    """Threads started during the run that still run after it: task bodies.

    Daemon or not: the interpreter waits at exit for the threads of a thread pool too.
    An idle pool thread that was just told to stop gets a moment to end first; the
    event loop's own helper threads (``asyncio_N``, name lookups) never run task code.
    """
    deadline = time.monotonic() + STRANDED_AFTER
    started = [
        t for t in threading.enumerate() if t not in before and not t.name.startswith("asyncio_")
    ]
    for thread in started:
        thread.join(max(0.0, deadline - time.monotonic()))
    return [t for t in started if t.is_alive()]


class _Foreground:
    """The stops of one :func:`run_foreground`.

    ``stop`` blocks until the runner has stopped, so it runs on a helper thread while the
    loop stays free to turn a second SIGINT into ``stop_now``.
    """

    def __init__(self, runner: Runner, control: StopControl, grace: float) -> None:
        self.runner = runner
        self.control = control
        self.grace = grace
        self.stopped = threading.Event()
        self.helpers: list[threading.Thread] = []
        self._crash_seen = False

    def stop(self, action: str) -> None:
        helper = threading.Thread(target=self._stop, args=(action,), name=f"taskflow-{action}-stop")
        helper.start()
        self.helpers.append(helper)

    def _stop(self, action: str) -> None:
        try:
            if action == HARD:
                self.runner.stop_now()
            else:
                self.runner.stop(timeout=self.grace)
        except Exception:
            log.exception("stopping failed")
        finally:
            self.stopped.set()
            self.control.notify()

    def stop_for(self, reason: str | None) -> None:
        """A graceful stop without a signal (logging ``reason``), unless one is under way."""
        if self.control.policy.request(GRACEFUL) is not None:
            if reason is not None:
                log.warning("%s; stopping", reason)
            self.stop(GRACEFUL)

    def check_crash(self) -> None:
        fatal = self.runner.fatal
        if fatal is None or self._crash_seen:
            return
        self._crash_seen = True
        log.error(
            "a worker stage died (%s); the process will exit with status %d",
            _describe(fatal),
            EXIT_CRASHED,
        )
        self.stop_for(None)  # said just above


def serve(
    kernel: Kernel,
    runner: Runner,
    control: StopControl,
    *,
    grace: float,
    connect_timeout: float,
    supervisor_pid: int | None = None,
    end_process: bool = False,
    cpu_affinity: str = "off",
    scheduling: str = "normal",
    gc_threshold: int = 0,
) -> int:
    """Connect the app (see :func:`connect`), then :func:`run_foreground` ``runner``.

    With ``cpu_affinity="auto"``, the process's threads are kept on one CPU of their own
    while the worker runs (:mod:`.affinity`); with ``scheduling="batch"`` they run under
    the system's batch policy meanwhile (:mod:`.scheduling`). The garbage collector's
    first threshold is ``gc_threshold`` meanwhile (:func:`young_threshold`; workers pass
    :data:`YOUNG_THRESHOLD` by default, a beat leaves the collector alone: it makes few
    objects). Returns the exit status: :data:`EXIT_OK` also when a stop signal came while
    connecting.
    """
    if not connect(kernel, control, connect_timeout):
        runner.stop_now()  # never started: marks it stopped
        return EXIT_OK
    # What the imports, the app and the connections made lives as long as the process:
    # moved out of the collector's generations, a full collection no longer walks it
    # (tens of thousands of objects, a pause of milliseconds in the middle of whatever
    # pickup meets it: python -m bench.gc_pause). Given back to the collector when the
    # worker stops (a program may go on after ``App.run_worker``).
    gc.freeze()
    claim = pin_process() if cpu_affinity == "auto" else None
    batch = None
    try:
        batch = use_batch() if scheduling == "batch" else None
        with young_threshold(gc_threshold):
            return run_foreground(runner, control, grace, supervisor_pid, end_process=end_process)
    finally:
        if batch is not None:
            batch.release()
        if claim is not None:
            claim.release()
        gc.unfreeze()


def check_gc_threshold(value: object) -> int:
    """``value`` as a ``gc_threshold`` (an integer, 0 or more); ValueError otherwise."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"gc_threshold must be an integer, 0 or more (got {value!r})")
    return value


@contextlib.contextmanager
def young_threshold(objects: int) -> Iterator[None]:
    """While inside, the garbage collector looks at its youngest generation once
    ``objects`` more objects were made than freed (``gc.set_threshold``'s first value;
    0 leaves the collector as it is); the thresholds before are put back after.

    At Python's 700, a busy worker collects every few tasks (the objects of the tasks in
    flight are more than 700) and finds nothing: the objects of a task are freed by their
    reference counts when it ends. The collection only finds garbage that refers to
    itself, which a task rarely leaves: at :data:`YOUNG_THRESHOLD` such garbage waits for
    up to that many objects instead of 700."""
    if objects <= 0:
        yield
        return
    before = gc.get_threshold()
    gc.set_threshold(objects, *before[1:])
    try:
        yield
    finally:
        gc.set_threshold(*before)


def run_worker(
    kernel: Kernel,
    runner: Runner,
    *,
    grace: float,
    connect_timeout: float,
    cpu_affinity: str = "off",
    scheduling: str = "normal",
    gc_threshold: int = YOUNG_THRESHOLD,
) -> None:
    """``App.run_worker``: :func:`serve` with the command line's signal handling.

    Raises :class:`BrokerError` when the broker stays unreachable and
    :class:`WorkerCrashed` (from the stage's exception) when a stage died.
    """
    with StopControl() as control:
        code = serve(
            kernel,
            runner,
            control,
            grace=grace,
            connect_timeout=connect_timeout,
            end_process=True,
            cpu_affinity=cpu_affinity,
            scheduling=scheduling,
            gc_threshold=gc_threshold,
        )
    if code == EXIT_CRASHED:
        fatal = runner.fatal
        raise WorkerCrashed(f"a worker stage died: {_describe(fatal)}") from fatal


def _describe(exc: BaseException | None) -> str:
    if exc is None:
        return "unknown cause"
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def exit_process(code: int) -> NoReturn:
    """End the process now with status ``code``, after flushing what was logged and printed.

    ``os._exit`` skips the interpreter's own cleanup, which is the point: it would wait for
    stranded threads, and in a process forked by the supervisor it would run the
    supervisor's cleanup.
    """
    for handler in _all_handlers():
        with contextlib.suppress(Exception):
            handler.flush()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


def _all_handlers() -> list[logging.Handler]:
    loggers = [logging.getLogger()] + [
        logger
        for logger in logging.Logger.manager.loggerDict.values()
        if isinstance(logger, logging.Logger)
    ]
    return [handler for logger in loggers for handler in logger.handlers]


def _log_stop(action: str, reason: str, grace: float) -> None:
    if action == HARD:
        log.warning("stopping now (%s): cancelling running tasks", reason)
    else:
        log.info(
            "stopping gracefully (%s): waiting up to %gs for running tasks; "
            "send SIGINT again to stop now",
            reason,
            grace,
        )
