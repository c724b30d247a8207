"""``Kernel``: what the engines (worker, beat, canvas, operations) are built on.

``App`` is the public facade; the kernel below it holds the parts of an app that engines
share -- settings, backends and their connection, the task registry, middleware, hooks, the
loop thread, the in-process event bus, the running services and the continuations -- and
offers them through a small public API. Engines depend on the kernel and never on ``App``,
so ``App`` can import the engines it offers (``app.worker()``, ``app.beat()``) at module
level; nothing below it imports it.

A *continuation* is what must happen after a task's outcome is durable and before its
message is acked (canvas advancement is one, registered by ``App``). The worker awaits
:meth:`Kernel.run_continuations`; an error propagates, so the message is not acked and its
redelivery runs the continuation again.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Any, Final, Protocol, TypeVar

from .._waiters import by_deadline, wait_limit
from ..brokers.base import Broker
from ..eventbus import EventBus, TaskEvent
from ..message import Envelope, TaskStatus
from ..middleware import MiddlewareStack
from ..results.base import ResultStore
from ..urls import mask_url
from .backends import Backends
from .enqueue import Enqueuer
from .hooks import Hooks
from .loop import LoopThread
from .prepare import Prepared, prepare
from .registry import TaskRegistry
from .service import Services
from .settings import Settings
from .taskdef import TaskDef

log = logging.getLogger("taskflow.kernel")

CLOSE_TIMEOUT: Final = 10.0
"""Seconds :meth:`Kernel.close` waits for the backends to close."""

__all__ = ["Continuation", "Kernel"]

T = TypeVar("T")


class Continuation(Protocol):
    """Called for a finished task that carries a continuation (``envelope.canvas``), once
    its outcome is durable and before its ack; ``encoded`` is its wire result."""

    async def __call__(self, envelope: Envelope, status: TaskStatus, encoded: Any) -> None: ...


class Kernel:
    """An app's shared parts and the engine-facing API over them."""

    def __init__(self, settings: Settings, broker: Broker, results: ResultStore) -> None:
        self.settings = settings
        self.clock = settings.clock
        self.broker = broker
        self.results = results
        self.registry = TaskRegistry()
        self.middleware = MiddlewareStack()
        self.hooks = Hooks()
        self.loop = LoopThread(settings.name)
        self.events = EventBus()
        """Finish events of this process's workers (``App.events()`` on the memory store)."""
        self.services = Services()
        self.backends = Backends(broker, results, settings)
        self.enqueuer = Enqueuer(
            settings,
            self.backends,
            loop=self.loop,
            middleware=self.middleware,
            hooks=self.hooks,
            registry=self.registry,
        )
        self._continuations: list[Continuation] = []
        # An app dropped without close() (built per request, say) would keep its loop
        # thread and connections for the process's life: once nothing refers to the
        # kernel, they are closed. Not at the interpreter's exit, which ends them anyway.
        self._abandoned = weakref.finalize(
            self, _close_abandoned, repr(self), self.loop, self.backends, self.hooks
        )
        self._abandoned.atexit = False

    def __repr__(self) -> str:
        # Never the raw URLs: they may carry a password or a token.
        broker, results = mask_url(self.broker.url), mask_url(self.results.url)
        return f"<Kernel {self.settings.name} broker={broker} results={results}>"

    # -- backends and the loop ---------------------------------------------------------
    @property
    def connected(self) -> bool:
        """True once the broker and the result store are connected."""
        return self.backends.connected

    async def connect(self) -> None:
        """Connect the broker and the result store (once)."""
        await self.backends.connect()

    async def declare(self, queue: str) -> None:
        """Declare ``queue`` on the broker (once per connection)."""
        await self.backends.declare(queue)

    def call(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coro`` on the loop thread and wait for its result (not from the loop)."""
        return self.loop.call(coro, timeout)

    async def acall(self, coro: Coroutine[Any, Any, T]) -> T:
        """Await ``coro`` on the loop thread, from any loop."""
        return await self.loop.acall(coro)

    def lookup(self, make: Callable[[], Coroutine[Any, Any, T]]) -> T:
        """Run the read ``make()`` on the loop, connecting first if needed.

        Any process may look a task up before it has sent anything (a web handler showing
        a task's status), so reads connect on first use, as sends do. An interrupt of the
        calling thread (Ctrl-C during ``get()``) cancels the read on the loop before it
        propagates, so a process that carries on keeps no stray wait.
        """
        return self.loop.call(self._connected(make), cancel_on_interrupt=True)

    async def alookup(self, make: Callable[[], Coroutine[Any, Any, T]]) -> T:
        """:meth:`lookup` for async callers."""
        return await self.loop.acall(self._connected(make))

    async def _connected(self, make: Callable[[], Coroutine[Any, Any, T]]) -> T:
        await self.backends.connect()
        return await make()

    def wait_result(self, record_id: str, timeout: float | None) -> dict[str, Any] | None:
        """Wait (push-based) until record ``record_id`` is terminal; None on timeout."""
        timeout = wait_limit(timeout)
        if self.results.capabilities.blocking and not self.loop.in_loop_thread():
            self.loop.check_fork()
            return self.results.wait_blocking(record_id, timeout)
        return self.lookup(lambda: self.await_result(record_id, timeout))

    async def await_result(self, record_id: str, timeout: float | None) -> dict[str, Any] | None:
        """:meth:`ResultStore.wait`, on the loop; None once ``timeout`` seconds passed,
        also when a server that stopped answering holds the store's wait up."""
        timeout = wait_limit(timeout)
        return await by_deadline(self.results.wait(record_id, timeout), timeout)

    def close(self) -> None:
        """Stop the services running on this kernel, close the backends and the loop.

        Closing the backends may take :data:`CLOSE_TIMEOUT` seconds; past it (a server that
        stopped answering), the kernel logs a WARNING and closes its loop anyway: closing
        never raises for it, and what the backends still held is dropped with the loop."""
        self.services.stop_all()
        _close(repr(self), self.loop, self.backends)
        self.hooks.close()

    # -- sending and taking back -------------------------------------------------------
    def prepare(
        self,
        name: str,
        args: Sequence[Any],
        kwargs: Mapping[str, Any],
        opts: Mapping[str, Any],
        task: TaskDef | None = None,
    ) -> Prepared:
        """Check one send of task ``name`` and encode its arguments (nothing is sent yet);
        typed by ``task``, or by the registered task of that name."""
        task = task or self.registry.get(name)
        return prepare(self.settings, name, task, args, kwargs, opts=opts)

    async def cancel(self, task_id: str) -> bool:
        """Cancel queued (never runs) or running (stopped) work."""
        return await self.enqueuer.cancel(task_id)

    def max_deliveries(self, name: str) -> int:
        """How many deliveries of one attempt of task ``name`` the broker makes."""
        return self.enqueuer.max_deliveries(name)

    # -- what engines call around a task's outcome -------------------------------------
    async def run_hooks(self, kind: str, event: TaskEvent, task: TaskDef | None = None) -> None:
        """Run the app's hooks of ``kind`` and ``task``'s own; never raises."""
        await self.hooks.run(kind, event, task)

    def add_continuation(self, continuation: Continuation) -> None:
        """Run ``continuation`` for every finished task that carries one."""
        self._continuations.append(continuation)

    async def run_continuations(self, envelope: Envelope, status: TaskStatus, encoded: Any) -> None:
        """Run the continuations of a finished task, in the order they were added; an
        error propagates (the caller leaves the message to redelivery)."""
        for continuation in self._continuations:
            await continuation(envelope, status, encoded)


def _close(name: str, loop: LoopThread, backends: Backends) -> None:
    """Close ``backends`` on ``loop``, then the loop (at once if it never started)."""
    if not loop.started:
        return
    try:
        loop.call(backends.close(), timeout=CLOSE_TIMEOUT)
    except TimeoutError:
        log.warning(
            "%s: closing the backends took longer than %gs; closed the rest anyway",
            name,
            CLOSE_TIMEOUT,
        )
    finally:
        loop.close()


def _close_abandoned(name: str, loop: LoopThread, backends: Backends, hooks: Hooks) -> None:
    """A kernel that nothing refers to any more was not closed: close it, on a thread of
    its own (the garbage collector may run this on the loop's own thread)."""
    hooks.close()
    if not loop.started:
        return
    log.warning(
        "%s was dropped without close(): closing its connections and loop thread now "
        "(call app.close(), or use the app as a context manager)",
        name,
    )
    threading.Thread(
        target=_close, args=(name, loop, backends), name="taskflow-close", daemon=True
    ).start()
