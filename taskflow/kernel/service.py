"""Services: the engines that run on a kernel's loop (workers, beats), and their lifecycle.

Every service has one state machine, ``new -> running -> stopping -> stopped``, kept here
once instead of by each engine:

* :meth:`Service.start` runs the service on the kernel's loop and returns once it is
  running (or raises what kept it from starting); a service starts once.
* :meth:`Service.stop` and :meth:`Service.stop_now` are idempotent and safe from any
  thread, any number of times, concurrently: they only post a request to the loop and wait
  for the one *stopped* event. A stop before ``start`` marks the service stopped. Called
  from the loop itself they return at once (waiting there would deadlock).
* A service whose part died stops itself with :attr:`Service.fatal` set; :meth:`Service.run`
  then raises :class:`~taskflow.errors.WorkerCrashed`, so the process can exit non-zero.

A running service is registered in the kernel's :class:`Services`, so that ``App.close()``
stops whatever still runs before it closes the backends the engines use.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import math
import threading
from collections.abc import Iterator
from typing import ClassVar, Protocol, Self

from .._waiters import wait_limit
from ..errors import TaskflowError, WorkerCrashed
from .loop import LoopThread

__all__ = ["RUNNING", "STOPPED", "STOPPING", "Service", "ServiceGroup", "Services", "Stoppable"]

log = logging.getLogger("taskflow.service")

NEW = "new"
RUNNING = "running"
STOPPING = "stopping"
STOPPED = "stopped"

# The grace a service gets when it stops itself because a part of it died.
_GRACE_AFTER_DEATH = 30.0


class Stoppable(Protocol):
    """An engine that can be told to stop at once, from any thread."""

    def stop_now(self) -> None:
        """Stop now; idempotent."""
        ...


class Services:
    """The engines running on one kernel; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: list[Stoppable] = []

    def add(self, service: Stoppable) -> None:
        """Note that ``service`` runs."""
        with self._lock:
            self._running.append(service)

    def discard(self, service: Stoppable) -> None:
        """Note that ``service`` stopped (no error if it was not registered)."""
        with self._lock:
            if service in self._running:
                self._running.remove(service)

    def __contains__(self, service: object) -> bool:
        with self._lock:
            return service in self._running

    def __iter__(self) -> Iterator[Stoppable]:
        with self._lock:
            return iter(list(self._running))

    def __len__(self) -> int:
        with self._lock:
            return len(self._running)

    def stop_all(self) -> None:
        """Hard-stop every registered service (each one leaves as it stops)."""
        for service in self:
            service.stop_now()


class Service:
    """An engine running on a kernel's loop, with the shared lifecycle.

    A subclass implements :meth:`_serve`: set ``ready`` once running, then return when
    :meth:`_stop_requested` returns (or on its own, which stops the service too). On the
    loop it reads :attr:`grace` and :attr:`hard` (what the stop asked for) and may await
    :attr:`escalated` (set by a later :meth:`stop_now`).
    """

    kind: ClassVar[str] = "service"
    """What the service is called in messages (``worker``, ``beat``)."""

    def __init__(self, name: str, loop: LoopThread, services: Services) -> None:
        self.name = name
        self.fatal: BaseException | None = None
        """The error that killed a part of this service (None while it runs or after a
        clean stop). A service whose part died stops itself; :meth:`run` then raises."""
        self.grace: float | None = None
        """Seconds running work may take to finish: the least a stop asked for."""
        self.hard = False
        """True once :meth:`stop_now` was asked for."""
        self._loop_thread = loop
        self._services = services
        self._lock = threading.Lock()
        self._state = NEW
        self._stopped = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._escalated: asyncio.Event | None = None

    @property
    def state(self) -> str:
        """``new``, ``running``, ``stopping`` or ``stopped``."""
        return self._state

    # -- from any thread -------------------------------------------------------------
    def start(self) -> Self:
        """Start in the background on the kernel's loop; returns once it is running."""
        with self._lock:
            if self._state != NEW:
                done = "already started" if self._state == RUNNING else "stopped"
                raise TaskflowError(
                    f"{self.kind} {self.name} was {done}: a {self.kind} runs once; make "
                    f"another to run again"
                )
            self._state = RUNNING
        ready: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._loop_thread.submit(self._main(ready))
        self._services.add(self)
        try:
            ready.result()
        except BaseException:
            self._finish()
            raise
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Graceful stop (running work gets ``timeout`` seconds); returns once stopped."""
        self._ask_stop(timeout)
        self._await_stopped(None)

    def stop_now(self) -> None:
        """Hard stop; returns once stopped."""
        self._request_stop(0.0, hard=True)
        self._await_stopped(None)

    def run(self) -> None:
        """Start and block until stopped (SIGTERM/SIGINT handling is the caller's).

        Raises :class:`~taskflow.errors.WorkerCrashed` (the part's error as its cause) if
        the service stopped because a part of it died.
        """
        self.start()
        self._stopped.wait()
        fatal = self.fatal
        if fatal is not None:
            why = " ".join(str(fatal).split())[:200]
            what = f"{type(fatal).__name__}: {why}" if why else type(fatal).__name__
            raise WorkerCrashed(
                f"{self.kind} {self.name} stopped: a stage died ({what})"
            ) from fatal

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- for subclasses --------------------------------------------------------------
    async def _serve(self, ready: concurrent.futures.Future[None]) -> None:
        """Run until stopped; set ``ready`` once running (an error before that is what
        :meth:`start` raises)."""
        raise NotImplementedError

    def _check_new(self, seam: str) -> None:
        """Raise unless this service was never started (``seam`` is a test seam's name)."""
        with self._lock:
            if self._state != NEW:
                raise TaskflowError(f"{seam} is for a {self.kind} that was not started")

    def _arm(self) -> None:
        """On the loop, before serving: fresh events for the stop requests to come."""
        self._stop_event = asyncio.Event()
        self._escalated = asyncio.Event()

    async def _stop_requested(self) -> None:
        """Return once a stop was asked for (or the service stopped itself)."""
        assert self._stop_event is not None
        await self._stop_event.wait()

    @property
    def escalated(self) -> asyncio.Event:
        """Set when a hard stop follows a graceful one (on the loop)."""
        assert self._escalated is not None
        return self._escalated

    def _ask_stop(self, timeout: float | None) -> float | None:
        """Ask for a graceful stop giving running work ``timeout`` seconds (None or
        infinity: no limit); returns that limit as :func:`wait_limit` reads it."""
        limit = wait_limit(timeout)
        self._request_stop(math.inf if limit is None else limit, hard=False)
        return limit

    def _request_stop(self, grace: float, hard: bool) -> None:
        with self._lock:
            if self._state == NEW:
                self._state = STOPPED
                self._stopped.set()
                return
            if self._state == STOPPED:
                return
            self._state = STOPPING
            grace = max(0.0, grace)
            self.grace = grace if self.grace is None else min(self.grace, grace)
            self.hard = self.hard or hard
            loop = self._loop
        if loop is not None:  # else _main has not run yet: it sees the state itself
            with contextlib.suppress(RuntimeError):  # the loop closed just now (so did we)
                loop.call_soon_threadsafe(self._wake)

    def _wake(self) -> None:
        """On the loop: wake :meth:`_stop_requested` (and :attr:`escalated` for a hard stop)."""
        if self.hard and self._escalated is not None:
            self._escalated.set()
        if self._stop_event is not None:
            self._stop_event.set()

    def _die(self, exc: BaseException) -> bool:
        """On the loop: a part of this service died; stop it with :attr:`fatal` set.
        False (and nothing done) if it was stopping already."""
        with self._lock:
            if self._state != RUNNING:
                return False
            self._state = STOPPING
            self.fatal = exc
            if self.grace is None:
                self.grace = _GRACE_AFTER_DEATH
        self._wake()
        return True

    def _await_stopped(self, timeout: float | None) -> None:
        if not self._loop_thread.in_loop_thread():
            self._stopped.wait(timeout)

    # -- on the loop -----------------------------------------------------------------
    async def _main(self, ready: concurrent.futures.Future[None]) -> None:
        self._arm()
        with self._lock:
            self._loop = asyncio.get_running_loop()
            stopping = self._state != RUNNING
        if stopping:  # a stop came before the loop got here
            self._wake()
        try:
            await self._serve(ready)
        except asyncio.CancelledError:
            raise  # the loop is closing
        except Exception as exc:
            if not ready.done():
                ready.set_exception(exc)
            else:
                log.exception("%s %s: stopping failed", self.kind, self.name)
        finally:
            if not ready.done():
                ready.set_exception(TaskflowError(f"{self.kind} {self.name} stopped at once"))
            self._finish()

    def _finish(self) -> None:
        with self._lock:
            self._state = STOPPED
        self._services.discard(self)
        self._stopped.set()


class ServiceGroup:
    """Services run as one (``taskflow worker --beat``): started in the order given and
    stopped in the reverse order, so that a beat given after its worker stops first and
    enqueues nothing new while the worker finishes its tasks."""

    def __init__(self, *services: Service) -> None:
        self.services = services

    @property
    def fatal(self) -> BaseException | None:
        """The error of the first service whose part died, if one did."""
        return next((s.fatal for s in self.services if s.fatal is not None), None)

    def start(self) -> ServiceGroup:
        """Start each service; if one cannot start, stop those already started."""
        started: list[Service] = []
        try:
            for service in self.services:
                service.start()
                started.append(service)
        except BaseException:
            for service in reversed(started):
                service.stop_now()
            raise
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Stop each service gracefully, the last started first."""
        for service in reversed(self.services):
            service.stop(timeout)

    def stop_now(self) -> None:
        """Stop each service now, the last started first."""
        for service in reversed(self.services):
            service.stop_now()
