"""The App: task registry, configuration, backends, hooks and middleware.

The App is the facade; the work behind it lives beside it: :mod:`taskflow.config` checks
its settings and builds its backends, :mod:`taskflow.sending` turns a call into an
envelope (``_prepare``), :mod:`taskflow.enqueue` puts envelopes on the broker and takes
work back (``_enqueue``, ``_cancel``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, ParamSpec, TypeVar, overload

from .brokers.base import Broker
from .clock import SYSTEM_CLOCK, Clock
from .config import (
    check_limit,
    check_max_deliveries,
    check_retries,
    check_weights,
    make_broker,
    make_results,
)
from .decorators import BoundTaskDecorator, TaskDecorator
from .enqueue import cancel, enqueue, enqueue_blocking, undo_enqueue
from .eventbus import EventBus, Subscription
from .events import open_events
from .message import Envelope, TaskStatus
from .middleware import HOOK_KINDS, Middleware, TaskEvent, chain_enqueue, run_hooks
from .operations import Admin
from .options import TaskOptions, check_queue, check_timeout
from .registry import TaskRegistry
from .results.base import ResultStore, TaskInfo
from .results.handle import AsyncResult, lookup
from .runtime import Runtime
from .sending import Prepared, check_call_options, message_for, prepare, prepare_many
from .task import Signature, Task
from .urls import mask_url

if TYPE_CHECKING:
    from datetime import timedelta

    from .beat import Beat, Schedule
    from .beat.periodic import PeriodicDecorator
    from .canvas import ChainResult, GroupResult
    from .worker import Worker

__all__ = ["App"]

log = logging.getLogger("taskflow.app")

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")

Hook = Callable[[TaskEvent], Any]


class App:
    """A taskflow application: declare tasks on it, send them, run workers for it.

    ``App("x")`` with no other arguments works in-process on ``memory://``.
    """

    def __init__(
        self,
        name: str = "taskflow",
        broker: str | Broker | None = None,
        results: str | ResultStore | None = None,
        *,
        default_queue: str = "default",
        queue_weights: Mapping[str, int] | None = None,
        default_timeout: float | None = 300.0,
        default_retries: int = 0,
        result_ttl: float | None = 86400.0,
        max_queued: int | None = None,
        max_deliveries: int = 5,
        queue_limits: Mapping[str, int] | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.name = name
        self.clock: Clock = clock or SYSTEM_CLOCK
        self.default_queue = check_queue(default_queue, f"App({name!r})")
        self.queue_weights = check_weights(queue_weights, name)
        self.default_timeout = check_timeout(default_timeout, f"App({name!r})", "default_timeout")
        self.default_retries = check_retries(default_retries, name)
        self.result_ttl = check_timeout(result_ttl, f"App({name!r})", "result_ttl")
        self.max_queued = check_limit(max_queued, name, "max_queued")
        # Deliveries of one attempt a broker makes before a task whose workers keep
        # dying is dead-lettered ``worker_lost`` (lost deliveries do not spend retries).
        self.max_deliveries = check_max_deliveries(max_deliveries, name)
        self.queue_limits = {
            q: check_limit(n, name, f"queue_limits[{q!r}]") or 0
            for q, n in (queue_limits or {}).items()
        }
        self.broker = make_broker(name, broker, self.clock)
        self.results = make_results(name, results, self.broker, self.clock)
        self.registry = TaskRegistry()
        self.middleware: list[Middleware] = []
        self.hooks: dict[str, list[Hook]] = {kind: [] for kind in HOOK_KINDS}
        self._runtime = Runtime(name)
        self._connected = False
        self._connect_lock: asyncio.Lock | None = None
        self._declared: set[str] = set()
        self._enqueue_chain = chain_enqueue(self.middleware, _identity)
        self._workers: list[Worker] = []
        self._event_bus = EventBus()  # finish events of this process's workers (memory)
        self._periodic_registry: Any = None  # taskflow.beat.periodic_of(self), made lazily

    def __repr__(self) -> str:
        # Never the raw URLs: they may carry a password or a token.
        broker, results = mask_url(self.broker.url), mask_url(self.results.url)
        return f"<App {self.name} broker={broker} results={results}>"

    # -- declaring tasks -------------------------------------------------------------
    @overload
    def task(self, fn: Callable[P, Awaitable[R]], /) -> Task[P, R]: ...

    @overload
    def task(self, fn: Callable[P, R], /) -> Task[P, R]: ...

    @overload
    def task(
        self,
        fn: None = None,
        /,
        *,
        bind: Literal[True],
        name: str | None = None,
        **options: Any,
    ) -> BoundTaskDecorator: ...

    @overload
    def task(
        self, fn: None = None, /, *, name: str | None = None, **options: Any
    ) -> TaskDecorator: ...

    def task(
        self,
        fn: Callable[..., Any] | None = None,
        /,
        *,
        name: str | None = None,
        **options: Any,
    ) -> Any:
        """Register a function as a task (bare ``@app.task`` or ``@app.task(...)``)."""
        if fn is None:
            return TaskDecorator(self, name, options)
        return self._register(fn, name, options)

    def _register(
        self, fn: Callable[..., Any], name: str | None, options: dict[str, Any]
    ) -> Task[Any, Any]:
        if not callable(fn):
            raise TypeError(f"@app.task needs a function, got {fn!r}")
        task_name = name or f"{fn.__module__}.{fn.__qualname__}"
        if not isinstance(task_name, str) or not task_name:
            raise ValueError(f"task name must be a non-empty string, got {task_name!r}")
        task: Task[Any, Any] = Task(self, fn, task_name, TaskOptions.build(task_name, options))
        self.registry.add(task)
        return task

    def hook(self, kind: str) -> Callable[[Hook], Hook]:
        """Register a lifecycle hook: queued, start, success, failure, retry, cancel, finish."""
        if kind not in HOOK_KINDS:
            raise ValueError(f"unknown hook kind {kind!r}; known: {', '.join(sorted(HOOK_KINDS))}")

        def register(fn: Hook) -> Hook:
            self.hooks[kind].append(fn)
            return fn

        return register

    def add_middleware(self, middleware: Middleware) -> None:
        """Add middleware (outermost first)."""
        if not isinstance(middleware, Middleware):
            raise TypeError("middleware must be a taskflow.middleware.Middleware")
        self.middleware.append(middleware)
        self._enqueue_chain = chain_enqueue(self.middleware, _identity)

    # -- the loop --------------------------------------------------------------------
    def _call(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        return self._runtime.call(coro, timeout)

    async def _acall(self, coro: Coroutine[Any, Any, T]) -> T:
        return await self._runtime.acall(coro)

    async def _connect(self) -> None:
        if self._connected:
            return
        if self._connect_lock is None:
            self._connect_lock = asyncio.Lock()
        async with self._connect_lock:
            if not self._connected:
                await self.broker.connect()
                await self.results.connect()
                self._connected = True

    async def _declare(self, queue: str) -> None:
        if queue not in self._declared:
            limit = self.queue_limits.get(queue, self.max_queued)
            await self.broker.declare(queue, max_length=limit)
            self._declared.add(queue)

    def close(self) -> None:
        """Stop workers started from this app, close backends and the loop thread."""
        for worker in list(self._workers):
            worker.stop_now()
        if self._runtime.started:
            try:
                self._call(self._aclose(), timeout=10)
            finally:
                self._runtime.close()

    async def _aclose(self) -> None:
        if self._connected:
            self._connected = False
            self._declared.clear()
            await self.broker.close()
            await self.results.close()

    def __enter__(self) -> App:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- sending ---------------------------------------------------------------------
    def _prepare(
        self,
        name: str,
        task: Task[Any, Any] | None,
        args: Sequence[Any],
        kwargs: Mapping[str, Any],
        opts: Mapping[str, Any],
    ) -> Prepared:
        """Check one send's options and encode its arguments (nothing is sent yet)."""
        return prepare(self, name, task, args, kwargs, opts=opts)

    def _send(
        self,
        task: Task[Any, Any],
        args: Sequence[Any],
        kwargs: Mapping[str, Any],
        opts: Mapping[str, Any],
    ) -> AsyncResult[Any]:
        prepared = self._prepare(task.name, task, args, kwargs, opts)
        ids = self._enqueue_sync([prepared])
        return AsyncResult(self, ids[0], task.name)

    async def _asend(
        self,
        task: Task[Any, Any],
        args: Sequence[Any],
        kwargs: Mapping[str, Any],
        opts: Mapping[str, Any],
    ) -> AsyncResult[Any]:
        prepared = self._prepare(task.name, task, args, kwargs, opts)
        ids = await self._acall(self._enqueue([prepared]))
        return AsyncResult(self, ids[0], task.name)

    def _enqueue_sync(self, prepared: list[Prepared]) -> list[str]:
        fast = enqueue_blocking(self, prepared)
        return fast if fast is not None else self._call(self._enqueue(prepared))

    def send_task(
        self,
        name: str,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> AsyncResult[Any]:
        """Send a task by name (the function need not be importable here)."""
        check_call_options(name, options)
        task = self.registry.get(name)
        prepared = self._prepare(name, task, tuple(args or ()), dict(kwargs or {}), options)
        ids = self._enqueue_sync([prepared])
        return AsyncResult(self, ids[0], name)

    def enqueue_many(self, signatures: Iterable[Signature]) -> list[AsyncResult[Any]]:
        """Send many signatures in as few broker round trips as the broker allows."""
        prepared = prepare_many(self, signatures)
        ids = self._enqueue_sync(prepared) if prepared else []
        return [
            AsyncResult(self, tid, p.envelope.task) for tid, p in zip(ids, prepared, strict=True)
        ]

    async def aenqueue_many(self, signatures: Iterable[Signature]) -> list[AsyncResult[Any]]:
        """``enqueue_many`` for async producers."""
        prepared = prepare_many(self, signatures)
        ids = await self._acall(self._enqueue(prepared)) if prepared else []
        return [
            AsyncResult(self, tid, p.envelope.task) for tid, p in zip(ids, prepared, strict=True)
        ]

    async def _enqueue(self, prepared: list[Prepared]) -> list[str]:
        """Record, publish and announce; all or nothing for one call."""
        return await enqueue(self, prepared)

    async def _undo_enqueue(
        self, envs: list[Envelope], records: list[tuple[str, dict[str, Any]]]
    ) -> None:
        """Forget the records and idempotency keys of a send that failed."""
        await undo_enqueue(self, envs, records)

    # -- results ---------------------------------------------------------------------
    @property
    def admin(self) -> Admin:
        """Operator actions: dead letters, replay, purge (:class:`~taskflow.operations.Admin`)."""
        return Admin(self)

    def result(self, task_id: str) -> AsyncResult[Any]:
        """An :class:`AsyncResult` for a known id."""
        return AsyncResult(self, task_id)

    def get_task(self, task_id: str) -> TaskInfo:
        """The record of ``task_id``; raises NotFound."""
        return AsyncResult(self, task_id).info()

    def _wait_result(self, task_id: str, timeout: float | None) -> dict[str, Any] | None:
        if self.results.capabilities.blocking and not self._runtime.in_loop_thread():
            return self.results.wait_blocking(task_id, timeout)
        return lookup(self, lambda: self.results.wait(task_id, timeout))

    async def _cancel(self, task_id: str) -> bool:
        """Cancel queued (never runs) or running (stopped) work."""
        return await cancel(self, task_id)

    # -- hooks -----------------------------------------------------------------------
    async def _run_hooks(self, kind: str, event: TaskEvent, task: Task[Any, Any] | None) -> None:
        """Run app hooks of ``kind`` and the task's own ``on_<kind>``; never raises."""
        own = getattr(task.options, f"on_{kind}", None) if task is not None else None
        await run_hooks(kind, [*self.hooks.get(kind, ()), *([own] if own else [])], event)

    # -- workers ---------------------------------------------------------------------
    def events(self, buffer: int = 100, drop: str = "newest") -> Subscription:
        """Finish events of every worker of the app (like ``Worker.subscribe``).

        In-process for the memory backend; through the result store's pub/sub for Redis
        and NATS, so workers in other processes are seen too (they publish while somebody
        listens, checked about once a second).
        """
        return open_events(self, self._event_bus, buffer, drop)

    def worker(
        self, queues: Sequence[str] | None = None, concurrency: int = 8, **options: Any
    ) -> Worker:
        """A worker for this app (call ``start()`` or use it as a context manager)."""
        from .worker import Worker

        return Worker(self, queues=queues, concurrency=concurrency, **options)

    def run_worker(
        self,
        queues: Sequence[str] | None = None,
        concurrency: int = 8,
        *,
        grace: float = 30.0,
        connect_timeout: float = 60.0,
        **options: Any,
    ) -> None:
        """Run a worker in the foreground until SIGTERM/SIGINT, like ``taskflow worker``.

        Waits up to ``connect_timeout`` seconds for the broker (then ``BrokerError``); the
        first signal stops gracefully (``grace`` seconds for running tasks), a second
        SIGINT stops now. Raises ``WorkerCrashed`` when a worker stage died. Task threads
        still running after the stop end the process (see ``docs/guide.md``).
        """
        from .worker.foreground import run_worker

        worker = self.worker(queues=queues, concurrency=concurrency, **options)
        run_worker(self, worker, grace=grace, connect_timeout=connect_timeout)

    # -- canvas (taskflow.canvas, imported lazily: an engine on top of the app) --------
    async def _advance_canvas(self, envelope: Envelope, status: TaskStatus, encoded: Any) -> None:
        """Called by the worker once a canvas step's outcome is durable, before its ack."""
        from .canvas.advance import advance_step

        await advance_step(self, envelope, status, encoded)

    def group_result(self, group_id: str) -> GroupResult:
        """The :class:`~taskflow.canvas.GroupResult` of a group; raises NotFound."""
        from .canvas.results import GroupResult, lookup

        found = lookup(self, group_id, "group")
        assert isinstance(found, GroupResult)
        return found

    def chain_result(self, chain_id: str) -> ChainResult:
        """The :class:`~taskflow.canvas.ChainResult` of a chain or chord; raises NotFound."""
        from .canvas.results import ChainResult, lookup

        found = lookup(self, chain_id, "chain")
        assert isinstance(found, ChainResult)
        return found

    # -- periodic tasks (taskflow.beat, imported lazily) ------------------------------
    def periodic(
        self,
        *,
        cron: str | None = None,
        every: float | timedelta | None = None,
        name: str | None = None,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        queue: str | None = None,
        priority: int | None = None,
        timezone: str | None = None,
        missed: str = "once",
    ) -> PeriodicDecorator:
        """Decorator: register the function as a task (unless it is one) and run it on a
        ``cron`` expression (5 fields, or 6 with seconds first) or ``every`` N seconds."""
        from .beat.periodic import PeriodicDecorator, periodic_of

        return PeriodicDecorator(
            periodic_of(self),
            {
                "cron": cron,
                "every": every,
                "name": name,
                "args": args,
                "kwargs": kwargs,
                "queue": queue,
                "priority": priority,
                "timezone": timezone,
                "missed": missed,
            },
        )

    def add_periodic(
        self,
        task: Task[Any, Any] | str,
        *,
        cron: str | None = None,
        every: float | timedelta | None = None,
        name: str | None = None,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        queue: str | None = None,
        priority: int | None = None,
        timezone: str | None = None,
        missed: str = "once",
        persist: bool | None = None,
    ) -> Schedule:
        """Schedule a task (or a registered task name). Declared in this process at module
        level; stored in the backend once the app is running, or with ``persist=True``."""
        from .beat.periodic import periodic_of

        registry = periodic_of(self)
        schedule = registry.build(
            task,
            cron=cron,
            every=every,
            name=name,
            args=args,
            kwargs=kwargs,
            queue=queue,
            priority=priority,
            timezone=timezone,
            missed=missed,
        )
        return registry.add(schedule, persist)

    def remove_periodic(self, name: str) -> bool:
        """Remove a schedule, declared or stored; True if there was one."""
        from .beat.periodic import periodic_of

        return periodic_of(self).remove(name)

    def pause_periodic(self, name: str) -> None:
        """Stop firing a schedule until resumed (stored: every beat process sees it)."""
        from .beat.periodic import periodic_of

        periodic_of(self).pause(name)

    def resume_periodic(self, name: str) -> None:
        """Fire a paused schedule again from its next run."""
        from .beat.periodic import periodic_of

        periodic_of(self).resume(name)

    def beat(self, **options: Any) -> Beat:
        """A beat for this app (``start()``/``stop()``, a context manager, or ``run()``)."""
        from .beat import Beat

        return Beat(self, **options)


def _identity(env: Envelope) -> Envelope:
    return env


# Names the engines above the app import from here.
_Prepared = Prepared
_check_call_options = check_call_options
__all__ += ["message_for"]
