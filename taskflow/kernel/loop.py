"""The loop thread: one background event loop that owns an app's async backends.

Async clients (redis.asyncio, nats) are bound to the loop that created them, so every
backend call of an App happens on this one loop. Synchronous callers (``delay()``,
``get()``) hand coroutines to it; embedded workers run on it too.

Which event loop it is: uvloop's where uvloop is installed (a dependency of the package on
CPython outside Windows), else asyncio's own; ``TASKFLOW_LOOP`` (``auto``, ``asyncio``,
``uvloop``) or ``taskflow worker --loop`` choose (:func:`loop_kind`). Both run the same
code: taskflow uses only what the asyncio API promises of a loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import importlib.util
import logging
import os
import threading
import weakref
from collections.abc import Coroutine
from typing import Any, TypeVar

from ..errors import ConfigError, TaskflowError

__all__ = [
    "LOOP_CHOICES",
    "LOOP_ENV",
    "SUBPROCESS_EVENT",
    "LoopThread",
    "loop_kind",
    "new_event_loop",
]

log = logging.getLogger("taskflow.kernel")

LOOP_ENV = "TASKFLOW_LOOP"
"""The environment variable that chooses the event loop of the apps of a process."""
LOOP_CHOICES = ("auto", "asyncio", "uvloop")
"""What :data:`LOOP_ENV` and ``taskflow worker --loop`` accept."""
SUBPROCESS_EVENT = "taskflow.subprocess"
"""The audit event (``sys.audit``) uvloop's loop raises just before it starts a program
(``asyncio.create_subprocess_exec``), with the program as its argument: uvloop makes the
child in C, without the events Python raises before ``subprocess.Popen`` or ``os.fork``."""

T = TypeVar("T")

_UNWIND = 2.0  # seconds an interrupted call may take to unwind on the loop


async def _tracked(coro: Coroutine[Any, Any, T], running: list[asyncio.Task[Any]]) -> T:
    """Await ``coro``, leaving the task that runs it in ``running`` for :meth:`LoopThread.call`."""
    task = asyncio.current_task()
    if task is not None:
        running.append(task)
    return await coro


def loop_kind(choice: str | None = None) -> str:
    """The event loop ``choice`` names: ``"uvloop"`` or ``"asyncio"``.

    ``None`` reads :data:`LOOP_ENV` (unset or empty: ``auto``). ``auto`` is uvloop where
    it can be imported, else asyncio's loop. Raises :class:`ConfigError` for a choice
    that is not one of :data:`LOOP_CHOICES` (naming where it came from) and for
    ``uvloop`` where uvloop is not installed.
    """
    where = "--loop" if choice is not None else LOOP_ENV
    if choice is None:
        choice = os.environ.get(LOOP_ENV, "") or "auto"
    kind = choice.strip().lower()
    if kind not in LOOP_CHOICES:
        raise ConfigError(f"{where} must be one of {', '.join(LOOP_CHOICES)} (got {choice!r})")
    if kind == "asyncio":
        return kind
    if importlib.util.find_spec("uvloop") is not None:
        return "uvloop"
    if kind == "uvloop":
        raise ConfigError(f"{where} asks for uvloop, which is not installed: pip install uvloop")
    return "asyncio"


def _new_loop(kind: str) -> tuple[asyncio.AbstractEventLoop, str]:
    """A new event loop of ``kind`` (from :func:`loop_kind`) and the kind it is: asyncio's
    when uvloop was found but cannot be imported (a broken install), with a warning."""
    if kind == "uvloop":
        try:
            from ._uvloop import Loop  # only where uvloop is installed
        except ImportError as exc:
            log.warning("uvloop cannot be imported (%s); using asyncio's event loop", exc)
        else:
            return Loop(), kind
    return asyncio.new_event_loop(), "asyncio"


def new_event_loop(choice: str | None = None) -> asyncio.AbstractEventLoop:
    """A new event loop of the kind ``choice`` names (:func:`loop_kind`; ``None``: what
    :data:`LOOP_ENV` says), as an app's loop thread would make it."""
    loop, _ = _new_loop(loop_kind(choice))
    return loop


_STARTED: weakref.WeakSet[LoopThread] = weakref.WeakSet()
"""The loop threads started in this process (for :func:`_after_fork_in_child`)."""


def _after_fork_in_child() -> None:
    # The child has none of the parent's threads: a started loop's thread is gone, and
    # the app's connections belong to the parent. Calls must refuse, not hang.
    parent = os.getppid()
    for loop_thread in list(_STARTED):
        if loop_thread.started:  # a closed app connects again, in either process
            loop_thread.inherited(parent)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class LoopThread:
    """A lazily started event-loop thread with thread-safe ``call``/``acall``.

    Its event loop is the one :data:`LOOP_ENV` names when the loop starts, unless
    :meth:`use` chose another before. In a process forked after the loop started, every
    call raises :class:`ConfigError` (:meth:`check_fork`).
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._choice: str | None = None  # the kind use() chose; None: the environment's
        self._kind: str | None = None  # the running loop's kind
        self._forked_from: int | None = None  # the process this one forked from, when used

    def inherited(self, parent: int) -> None:
        """In a child forked from ``parent`` after this loop started: drop the loop (its
        thread is not in this process) and refuse calls from now on."""
        self._lock = threading.Lock()  # another thread of the parent may have held it
        self._loop = None
        self._thread = None
        self._forked_from = parent

    def check_fork(self) -> None:
        """Raise :class:`ConfigError` in a process forked from one that used this app."""
        if self._forked_from is not None:
            raise ConfigError(
                f"app {self._name!r} was used in process {self._forked_from} before this "
                "process forked from it: its event loop and connections stay with that "
                "process. Call app.close() before forking (the child and the parent then "
                "connect again on their next call), or create the app after the fork"
            )

    def use(self, kind: str) -> None:
        """Run on the event loop ``kind`` (one of :data:`LOOP_CHOICES`) when the loop starts.

        Raises :class:`ConfigError` for a bad or unavailable choice, and for a loop of
        another kind that already runs (something called the app before).
        """
        wanted = loop_kind(kind)
        with self._lock:
            if self._kind is not None and self._kind != wanted:
                raise ConfigError(
                    f"the app's event loop ({self._kind}) already runs: the loop can only "
                    f"be chosen ({wanted}) before the app makes its first call"
                )
            self._choice = wanted

    @property
    def kind(self) -> str:
        """``"uvloop"`` or ``"asyncio"``: the running loop's kind, else the one it would be."""
        return self._kind or self._choice or loop_kind()

    @property
    def started(self) -> bool:
        """True while the loop thread runs."""
        return self._loop is not None

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The loop, started on first use."""
        loop = self._loop
        if loop is not None:
            return loop
        self.check_fork()
        with self._lock:
            if self._loop is None:
                ready = threading.Event()
                loop, self._kind = _new_loop(self._choice or loop_kind())
                self._thread = threading.Thread(
                    target=self._run,
                    args=(loop, ready),
                    name=f"taskflow-{self._name}",
                    daemon=True,
                )
                self._thread.start()
                ready.wait()
                self._loop = loop
                _STARTED.add(self)
            return self._loop

    @staticmethod
    def _run(loop: asyncio.AbstractEventLoop, ready: threading.Event) -> None:
        asyncio.set_event_loop(loop)
        loop.call_soon(ready.set)
        try:
            loop.run_forever()
            pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for task in pending:
                task.cancel()
            if pending:
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            loop.close()

    def in_loop_thread(self) -> bool:
        """True when called from the loop's own thread."""
        return self._thread is not None and threading.current_thread() is self._thread

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Schedule ``coro`` on the loop and return a concurrent future."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def call(
        self,
        coro: Coroutine[Any, Any, T],
        timeout: float | None = None,
        *,
        cancel_on_interrupt: bool = False,
    ) -> T:
        """Run ``coro`` on the loop and block this thread for its result.

        With ``cancel_on_interrupt`` (reads and waits), an exception that interrupts the
        calling thread (Ctrl-C's KeyboardInterrupt, a task's timeout raised into its thread)
        cancels the coroutine and waits briefly until it has unwound, so a process that
        carries on is not left with a wait running on its loop. Writes are left to finish:
        half a send is worse than a send that completes after the caller gave up.
        """
        if self.in_loop_thread():
            coro.close()
            raise TaskflowError(
                "a blocking taskflow call was made from async code running on the app's loop; "
                "use the async variant (adelay, aapply_async, aget)"
            )
        if not cancel_on_interrupt:
            fut = self.submit(coro)
            try:
                return fut.result(timeout)
            except concurrent.futures.TimeoutError:
                fut.cancel()
                raise
        running: list[asyncio.Task[Any]] = []
        fut = self.submit(_tracked(coro, running))
        try:
            return fut.result(timeout)
        except BaseException:
            if not fut.done():  # interrupted here, not an error of the call itself
                fut.cancel()
                self._unwind(coro, running)
            raise

    def _unwind(self, coro: Coroutine[Any, Any, Any], running: list[asyncio.Task[Any]]) -> None:
        """Wait (bounded) until a cancelled :func:`_tracked` call has finished on the loop.

        The cancellation reaches the loop before this check does (both are loop callbacks,
        in order), so an empty ``running`` means the call never started.
        """

        async def settled() -> None:
            if running:
                await asyncio.wait(running, timeout=_UNWIND)
            else:
                coro.close()  # cancelled before it started: no "never awaited" warning

        loop = self._loop
        if loop is None or self.in_loop_thread():
            return
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(settled(), loop).result(_UNWIND + 1.0)

    async def acall(self, coro: Coroutine[Any, Any, T]) -> T:
        """Await ``coro`` on this loop from any loop."""
        if asyncio.get_running_loop() is self._loop:
            return await coro
        return await asyncio.wrap_future(self.submit(coro))

    def close(self, timeout: float = 5.0) -> None:
        """Stop the loop and join its thread. Idempotent."""
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = None
            self._thread = None
            self._kind = None
        if loop is None or thread is None:
            return
        if threading.current_thread() is thread:
            loop.call_soon(loop.stop)
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout)
