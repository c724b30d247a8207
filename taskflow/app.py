"""The App: the public facade over an app's kernel and the engines built on it.

``App(...)`` checks its settings, builds its backends and a :class:`~taskflow.kernel.Kernel`
(what the engines share), registers canvas advancement on it as a continuation, and owns
the app's periodic schedules. Every method here is public API (``API.md``): declaring
tasks, sending, looking results up, and the facades over the engines -- ``worker()``,
``beat()``, the canvas result lookups -- which take the kernel, never the App. Nothing
below this module imports it, so it imports the engines at module level.
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, ParamSpec, TypeVar, Unpack, overload

from .brokers.base import Broker
from .canvas import (
    CanvasContinuation,
    ChainResult,
    GroupResult,
    Signature,
    chain_result,
    group_result,
    send_signatures,
)
from .canvas.signature import attach_callbacks, prepare_signatures
from .clock import Clock
from .decorators import BoundTaskDecorator, TaskDecorator
from .eventbus import Subscription
from .events import open_events
from .kernel import SEND_OPTIONS, Kernel, Settings, check_call_options, make_broker, make_results
from .kernel.hooks import Hook
from .kernel.registry import TaskRegistry
from .middleware import Middleware
from .options import call_arguments, check_task_id
from .results.base import ResultStore, TaskInfo
from .results.handle import AsyncResult
from .task import Task, register
from .urls import mask_url
from .worker import Worker
from .worker.affinity import check_choice
from .worker.foreground import YOUNG_THRESHOLD, check_gc_threshold, run_worker
from .worker.scheduling import check_scheduling

if TYPE_CHECKING:
    # Imported where first used (``admin()``; ``schedules``, ``periodic()``, ``beat()``):
    # a worker process needs neither the operations API nor, without schedules, the beat.
    from .beat import Beat, PeriodicDecorator, PeriodicRegistry, Schedule, ScheduleSpec
    from .operations import Admin

__all__ = ["App"]

P = ParamSpec("P")
R = TypeVar("R")


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
        audit_retention: float = 30 * 86400.0,
        clock: Clock | None = None,
    ) -> None:
        settings = Settings.build(
            name,
            clock=clock,
            default_queue=default_queue,
            queue_weights=queue_weights,
            default_timeout=default_timeout,
            default_retries=default_retries,
            result_ttl=result_ttl,
            max_queued=max_queued,
            max_deliveries=max_deliveries,
            queue_limits=queue_limits,
            audit_retention=audit_retention,
        )
        built = make_broker(name, broker, settings.clock)
        self.kernel = Kernel(settings, built, make_results(name, results, built, settings.clock))
        """What the engines are built on: the seam for workers, beats and tests."""
        self.kernel.add_continuation(CanvasContinuation(self.kernel))
        self._schedules: PeriodicRegistry | None = None
        self._schedules_lock = threading.Lock()

    @property
    def schedules(self) -> PeriodicRegistry:
        """The app's periodic schedules, declared and stored (``taskflow schedules``)."""
        registry = self._schedules
        if registry is None:
            with self._schedules_lock:  # one registry, whichever thread asks first
                registry = self._schedules
                if registry is None:
                    # The beat's modules (cron, time zones) load with the first schedule,
                    # not with every worker and producer (python -m bench.startup_trace).
                    from .beat import PeriodicRegistry

                    registry = self._schedules = PeriodicRegistry(self.kernel)
        return registry

    def __repr__(self) -> str:
        # Never the raw URLs: they may carry a password or a token.
        broker, results = mask_url(self.broker.url), mask_url(self.results.url)
        return f"<App {self.name} broker={broker} results={results}>"

    # -- what it was built with ----------------------------------------------------------
    @property
    def name(self) -> str:
        """The app's name."""
        return self.kernel.settings.name

    @property
    def default_queue(self) -> str:
        """Where tasks go unless they or the call name another queue."""
        return self.kernel.settings.default_queue

    @property
    def clock(self) -> Clock:
        """The app's time source."""
        return self.kernel.clock

    @property
    def broker(self) -> Broker:
        """The app's broker."""
        return self.kernel.broker

    @property
    def results(self) -> ResultStore:
        """The app's result store."""
        return self.kernel.results

    @property
    def registry(self) -> TaskRegistry:
        """The app's tasks by name."""
        return self.kernel.registry

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
            return TaskDecorator(self.kernel, name, options)
        return register(self.kernel, fn, name, options)

    def hook(self, kind: str) -> Callable[[Hook], Hook]:
        """Register a lifecycle hook: queued, start, success, failure, retry, cancel, finish."""
        hooks = self.kernel.hooks
        hooks.check(kind)  # at the decorator line, not when the function is applied

        def register_hook(fn: Hook) -> Hook:
            hooks.add(kind, fn)
            return fn

        return register_hook

    def add_middleware(self, middleware: Middleware) -> None:
        """Add middleware (outermost first)."""
        self.kernel.middleware.add(middleware)

    # -- closing ---------------------------------------------------------------------
    def close(self) -> None:
        """Stop workers started from this app, close backends and the loop thread."""
        self.kernel.close()

    def __enter__(self) -> App:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- sending ---------------------------------------------------------------------
    def send_task(
        self,
        name: str,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> AsyncResult[Any]:
        """Send a task by name (the function need not be importable here)."""
        check_call_options(name, options, SEND_OPTIONS)
        options = attach_callbacks(self.kernel, name, options)
        args, kwargs = call_arguments(args, kwargs, name)
        prepared = self.kernel.prepare(name, args, kwargs, options)
        ids = self.kernel.enqueuer.enqueue_blocking([prepared])
        return AsyncResult(self.kernel, ids[0], name)

    def enqueue_many(self, signatures: Iterable[Signature]) -> list[AsyncResult[Any]]:
        """Send many signatures in as few broker round trips as the broker allows."""
        return send_signatures(self.kernel, signatures)

    async def aenqueue_many(self, signatures: Iterable[Signature]) -> list[AsyncResult[Any]]:
        """``enqueue_many`` for async producers."""
        kernel = self.kernel
        prepared = prepare_signatures(kernel, signatures)
        ids = await kernel.acall(kernel.enqueuer.enqueue(prepared)) if prepared else []
        return [
            AsyncResult(kernel, tid, p.envelope.task) for tid, p in zip(ids, prepared, strict=True)
        ]

    # -- results ---------------------------------------------------------------------
    @property
    def admin(self) -> Admin:
        """Operator actions: dead letters, replay, purge (:class:`~taskflow.operations.Admin`)."""
        from .operations import Admin  # see the import under TYPE_CHECKING

        return Admin(self.kernel)

    def result(self, task_id: str) -> AsyncResult[Any]:
        """An :class:`AsyncResult` for a known id."""
        return AsyncResult(self.kernel, check_task_id(task_id, "app.result"))

    def get_task(self, task_id: str) -> TaskInfo:
        """The record of ``task_id``; raises NotFound."""
        return AsyncResult(self.kernel, check_task_id(task_id, "app.get_task")).info()

    def group_result(self, group_id: str) -> GroupResult:
        """The :class:`~taskflow.canvas.GroupResult` of a group; raises NotFound."""
        return group_result(self.kernel, group_id)

    def chain_result(self, chain_id: str) -> ChainResult:
        """The :class:`~taskflow.canvas.ChainResult` of a chain or chord; raises NotFound."""
        return chain_result(self.kernel, chain_id)

    # -- workers ---------------------------------------------------------------------
    def events(self, buffer: int = 100, drop: str = "newest") -> Subscription:
        """Finish events of every worker of the app (like ``Worker.subscribe``).

        In-process for the memory backend; through the result store's pub/sub for Redis
        and NATS, so workers in other processes are seen too (they publish while somebody
        listens, checked about once a second).
        """
        return open_events(self.kernel, buffer, drop)

    def worker(
        self, queues: Sequence[str] | None = None, concurrency: int = 8, **options: Any
    ) -> Worker:
        """A worker for this app (call ``start()`` or use it as a context manager)."""
        return Worker(self.kernel, queues=queues, concurrency=concurrency, **options)

    def run_worker(
        self,
        queues: Sequence[str] | None = None,
        concurrency: int = 8,
        *,
        grace: float = 30.0,
        connect_timeout: float = 60.0,
        cpu_affinity: str = "off",
        scheduling: str = "normal",
        gc_threshold: int = YOUNG_THRESHOLD,
        **options: Any,
    ) -> None:
        """Run a worker in the foreground until SIGTERM/SIGINT, like ``taskflow worker``.

        Waits up to ``connect_timeout`` seconds for the broker (then ``BrokerError``); the
        first signal stops gracefully (``grace`` seconds for running tasks), a second
        SIGINT stops now. Raises ``WorkerCrashed`` when a worker stage died. Task threads
        still running after the stop end the process (see ``docs/guide.md``).
        ``cpu_affinity="auto"`` keeps the process's threads on one CPU of their own while
        it runs (thread pool only; see "CPU affinity" in ``docs/guide.md``).
        ``scheduling="batch"`` runs the process's threads under the system's batch policy
        while it runs (Linux; see "Scheduling policy" in ``docs/guide.md``).
        ``gc_threshold``: the garbage collector's first threshold while the worker runs
        (0: as the program set it; see "The garbage collector" in ``docs/guide.md``).
        """
        affinity = check_choice(cpu_affinity, options.get("pool", "threads"))
        policy = check_scheduling(scheduling)
        young = check_gc_threshold(gc_threshold)
        worker = self.worker(queues=queues, concurrency=concurrency, **options)
        run_worker(
            self.kernel,
            worker,
            grace=grace,
            connect_timeout=connect_timeout,
            cpu_affinity=affinity,
            scheduling=policy,
            gc_threshold=young,
        )

    # -- periodic tasks --------------------------------------------------------------
    def periodic(self, **spec: Unpack[ScheduleSpec]) -> PeriodicDecorator:
        """Decorator: register the function as a task (unless it is one) and run it on a
        ``cron`` expression (5 fields, or 6 with seconds first) or ``every`` N seconds;
        the options are :class:`~taskflow.beat.ScheduleSpec`'s."""
        from .beat import PeriodicDecorator

        return PeriodicDecorator(self.schedules, spec)

    def add_periodic(
        self,
        task: Task[Any, Any] | str,
        *,
        persist: bool | None = None,
        **spec: Unpack[ScheduleSpec],
    ) -> Schedule:
        """Schedule a task (or a registered task name), with ``periodic``'s options.
        Declared in this process at module level; stored in the backend once the app is
        running, or with ``persist=True``."""
        return self.schedules.add(self.schedules.build(task, spec), persist)

    def remove_periodic(self, name: str) -> bool:
        """Remove a schedule, declared or stored; True if there was one."""
        return self.schedules.remove(name)

    def pause_periodic(self, name: str) -> None:
        """Stop firing a schedule until resumed (stored: every beat process sees it)."""
        self.schedules.pause(name)

    def resume_periodic(self, name: str) -> None:
        """Fire a paused schedule again from its next run."""
        self.schedules.resume(name)

    def beat(self, **options: Any) -> Beat:
        """A beat for this app (``start()``/``stop()``, a context manager, or ``run()``)."""
        from .beat import Beat

        return Beat(self.kernel, self.schedules, **options)
