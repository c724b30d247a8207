"""The App: task registry, configuration, backends, hooks and middleware."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping, Sequence
from datetime import datetime
from typing import (
    TYPE_CHECKING,
    Any,
    Concatenate,
    Literal,
    ParamSpec,
    Protocol,
    TypeVar,
    overload,
)

from . import codec
from .brokers import broker_from_url
from .brokers.base import Broker, Message
from .clock import SYSTEM_CLOCK, Clock
from .errors import ConfigError, IdempotencyConflict, PayloadError, TaskflowError
from .message import Envelope, TaskStatus
from .middleware import HOOK_KINDS, Middleware, TaskEvent, chain_enqueue
from .options import SERIALIZERS, TaskOptions, check_priority, check_queue, check_timeout
from .payload import encode_any
from .registry import TaskRegistry
from .results import results_from_url
from .results.base import ResultStore, TaskInfo, is_terminal
from .results.handle import AsyncResult
from .runtime import Runtime
from .task import Signature, Task

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

_DERIVED_RESULTS = {"memory": "memory://", "redis": None, "rediss": None, "nats": None}


class _Prepared:
    __slots__ = ("digest", "envelope", "explicit_id", "store_result")

    def __init__(
        self, envelope: Envelope, store_result: bool, digest: str | None, explicit_id: bool
    ) -> None:
        self.envelope = envelope
        self.store_result = store_result
        self.digest = digest
        self.explicit_id = explicit_id  # the caller chose the task id (it may be taken)


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
        queue_limits: Mapping[str, int] | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.name = name
        self.clock: Clock = clock or SYSTEM_CLOCK
        self.default_queue = check_queue(default_queue, f"App({name!r})")
        self.queue_weights = _check_weights(queue_weights, name)
        self.default_timeout = check_timeout(default_timeout, f"App({name!r})", "default_timeout")
        if (
            isinstance(default_retries, bool)
            or not isinstance(default_retries, int)
            or default_retries < 0
        ):
            raise ConfigError(f"App({name!r}): default_retries must be a non-negative integer")
        self.default_retries = default_retries
        self.result_ttl = check_timeout(result_ttl, f"App({name!r})", "result_ttl")
        self.max_queued = _check_limit(max_queued, name, "max_queued")
        self.queue_limits = {
            q: _check_limit(n, name, f"queue_limits[{q!r}]") or 0
            for q, n in (queue_limits or {}).items()
        }
        self.broker = self._make_broker(broker)
        self.results = self._make_results(results, broker)
        self.registry = TaskRegistry()
        self.middleware: list[Middleware] = []
        self.hooks: dict[str, list[Hook]] = {kind: [] for kind in HOOK_KINDS}
        self._runtime = Runtime(name)
        self._connected = False
        self._connect_lock: asyncio.Lock | None = None
        self._declared: set[str] = set()
        self._enqueue_chain = chain_enqueue(self.middleware, _identity)
        self._workers: list[Worker] = []
        self._periodic_registry: Any = None  # taskflow.beat.periodic_of(self), made lazily

    def __repr__(self) -> str:
        return f"<App {self.name} broker={self.broker.url} results={self.results.url}>"

    # -- configuration ---------------------------------------------------------------
    def _make_broker(self, broker: str | Broker | None) -> Broker:
        if isinstance(broker, Broker):
            return broker
        url = broker or os.environ.get("TASKFLOW_BROKER_URL") or "memory://"
        if not isinstance(url, str):
            raise ConfigError(f"App({self.name!r}): broker must be a URL or a Broker")
        return broker_from_url(url, clock=self.clock)

    def _make_results(
        self, results: str | ResultStore | None, broker: str | Broker | None
    ) -> ResultStore:
        if isinstance(results, ResultStore):
            return results
        url = results or os.environ.get("TASKFLOW_RESULTS_URL")
        if url is None:
            url = self._derived_results_url()
        if not isinstance(url, str):
            raise ConfigError(f"App({self.name!r}): results must be a URL or a ResultStore")
        return results_from_url(url, clock=self.clock)

    def _derived_results_url(self) -> str:
        scheme = self.broker.url.split("://", 1)[0]
        if scheme in ("redis", "rediss", "nats"):
            return self.broker.url
        if scheme != "memory":
            log.warning("no result store configured for %s; keeping results in memory", scheme)
        return "memory://"

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
    ) -> _BoundTaskDecorator: ...

    @overload
    def task(
        self, fn: None = None, /, *, name: str | None = None, **options: Any
    ) -> _TaskDecorator: ...

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
            return _TaskDecorator(self, name, options)
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
    ) -> _Prepared:
        topts = task.options if task is not None else TaskOptions()
        if opts.get("queue") is not None:
            queue = check_queue(opts["queue"], name)  # an empty name is an error, not a default
        else:
            queue = topts.queue or self.default_queue
        priority = check_priority(opts["priority"], name) if "priority" in opts else topts.priority
        if "retries" in opts:
            retries = TaskOptions.build(name, {"retries": opts["retries"]}).retries
        else:
            retries = topts.retries
        timeout = check_timeout(opts["timeout"], name) if "timeout" in opts else topts.timeout
        if task is not None:
            enc_args, enc_kwargs = task.schema.encode_args(tuple(args), dict(kwargs))
        else:
            enc_args, enc_kwargs = _encode_untyped(name, args, kwargs)
        now = self.clock.time()
        eta = _eta(name, opts, now)
        env = Envelope(
            id=str(opts.get("task_id") or uuid.uuid4()),
            task=name,
            queue=queue,
            args=enc_args,
            kwargs=enc_kwargs,
            priority=priority,
            created_at=now,
            eta=eta,
            expires=_expires(name, opts.get("expires"), now),
            max_retries=self.default_retries if retries is None else retries,
            timeout=timeout if timeout is not None else self.default_timeout,
            idempotency_key=_opt_str(name, "idempotency_key", opts.get("idempotency_key")),
            headers=_headers(name, opts.get("headers")),
            canvas=opts.get("canvas"),
            parent_id=opts.get("parent_id"),
            root_id=opts.get("root_id"),
            content_type=SERIALIZERS[topts.serializer],
        )
        digest = None
        if env.idempotency_key is not None:
            digest = hashlib.sha256(codec.dumps([name, enc_args, enc_kwargs])).hexdigest()
        store = topts.store_result if task is not None else True
        return _Prepared(env, store, digest, "task_id" in opts)

    def _send(
        self,
        task: Task[Any, Any],
        args: Sequence[Any],
        kwargs: Mapping[str, Any],
        opts: Mapping[str, Any],
    ) -> AsyncResult[Any]:
        prepared = self._prepare(task.name, task, args, kwargs, opts)
        ids = self._call(self._enqueue([prepared]))
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

    def send_task(
        self,
        name: str,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> AsyncResult[Any]:
        """Send a task by name (the function need not be importable here)."""
        _check_call_options(name, options)
        task = self.registry.get(name)
        prepared = self._prepare(name, task, tuple(args or ()), dict(kwargs or {}), options)
        ids = self._call(self._enqueue([prepared]))
        return AsyncResult(self, ids[0], name)

    def enqueue_many(self, signatures: Iterable[Signature]) -> list[AsyncResult[Any]]:
        """Send many signatures in as few broker round trips as the broker allows."""
        prepared = self._prepare_many(signatures)
        ids = self._call(self._enqueue(prepared)) if prepared else []
        return [
            AsyncResult(self, tid, p.envelope.task) for tid, p in zip(ids, prepared, strict=True)
        ]

    async def aenqueue_many(self, signatures: Iterable[Signature]) -> list[AsyncResult[Any]]:
        """``enqueue_many`` for async producers."""
        prepared = self._prepare_many(signatures)
        ids = await self._acall(self._enqueue(prepared)) if prepared else []
        return [
            AsyncResult(self, tid, p.envelope.task) for tid, p in zip(ids, prepared, strict=True)
        ]

    def _prepare_many(self, signatures: Iterable[Signature]) -> list[_Prepared]:
        out = []
        for sig in signatures:
            if not isinstance(sig, Signature):
                raise TypeError(f"enqueue_many takes signatures (task.s(...)), got {sig!r}")
            _check_call_options(sig.name, sig.options)
            out.append(
                self._prepare(
                    sig.name, self.registry.get(sig.name), sig.args, sig.kwargs, sig.options
                )
            )
        return out

    async def _enqueue(self, prepared: list[_Prepared]) -> list[str]:
        """Record, publish and announce; all or nothing for one call."""
        await self._connect()
        envs = [self._enqueue_chain(p.envelope) for p in prepared]
        for env in envs:
            await self._declare(env.queue)
        ids, fresh = await self._resolve_idempotency(prepared, envs)
        if not fresh:
            return ids
        records = [(envs[i].id, _queued_record(envs[i])) for i in fresh if prepared[i].store_result]
        messages = [_message(envs[i]) for i in fresh]
        fresh_envs = [envs[i] for i in fresh]
        if (
            records
            and self.results.capabilities.atomic_create
            and not any(prepared[i].explicit_id for i in fresh)
        ):
            # Generated ids are new, and a create never overwrites a worker's update:
            # write the queued records and publish in parallel (one round trip of latency).
            await self._record_and_publish(fresh_envs, records, messages)
        else:
            if records:
                await self._create_records(fresh_envs, records)
            try:
                await self.broker.publish(messages)
            except BaseException:
                await self._undo_enqueue(fresh_envs, records)
                raise
        if self.hooks["queued"]:
            for i in fresh:
                await self._run_hooks("queued", _queued_event(envs[i]), None)
        return ids

    async def _resolve_idempotency(
        self, prepared: list[_Prepared], envs: list[Envelope]
    ) -> tuple[list[str], list[int]]:
        ids = [env.id for env in envs]
        fresh: list[int] = []
        for i, (p, env) in enumerate(zip(prepared, envs, strict=True)):
            if env.idempotency_key is None:
                fresh.append(i)
                continue
            key = f"idem:{env.idempotency_key}"
            value = codec.dumps({"id": env.id, "digest": p.digest}).decode()
            existing = await self.results.set_nx(key, value, self.result_ttl)
            if existing is None:
                fresh.append(i)
                continue
            known = codec.loads(existing)
            if known.get("digest") != p.digest:
                raise IdempotencyConflict(
                    f"{env.task}: idempotency key {env.idempotency_key!r} was used for "
                    f"task {known.get('id')} with different arguments"
                )
            ids[i] = str(known["id"])
        return ids, fresh

    async def _record_and_publish(
        self,
        envs: list[Envelope],
        records: list[tuple[str, dict[str, Any]]],
        messages: list[Message],
    ) -> None:
        created, published = await asyncio.gather(
            self.results.create_many(records, None),
            self.broker.publish(messages),
            return_exceptions=True,
        )
        if isinstance(published, BaseException):
            await self._undo_enqueue(envs, records)
            raise published
        if isinstance(created, BaseException):
            # The messages are out; the worker's own updates will create the records.
            log.warning("queued records not written (%s); the tasks were published", created)

    async def _create_records(
        self, envs: list[Envelope], records: list[tuple[str, dict[str, Any]]]
    ) -> None:
        written = await self.results.create_many(records, None)
        taken = [tid for (tid, _), ok in zip(records, written, strict=True) if not ok]
        if taken:
            await self._undo_enqueue(
                envs, [r for r, ok in zip(records, written, strict=True) if ok]
            )
            raise TaskflowError(
                f"task id(s) already in use: {', '.join(taken[:5])}; a task id names one task "
                "for good (use idempotency_key to deduplicate sends)"
            )

    async def _undo_enqueue(
        self, envs: list[Envelope], records: list[tuple[str, dict[str, Any]]]
    ) -> None:
        for tid, _ in records:
            await self.results.delete(tid)
        for env in envs:
            if env.idempotency_key is not None:
                await self.results.delete_value(f"idem:{env.idempotency_key}")

    # -- results ---------------------------------------------------------------------
    def result(self, task_id: str) -> AsyncResult[Any]:
        """An :class:`AsyncResult` for a known id."""
        return AsyncResult(self, task_id)

    def get_task(self, task_id: str) -> TaskInfo:
        """The record of ``task_id``; raises NotFound."""
        return AsyncResult(self, task_id).info()

    def _wait_result(self, task_id: str, timeout: float | None) -> dict[str, Any] | None:
        waiter = getattr(self.results, "wait_blocking", None)
        if waiter is not None and not self._runtime.in_loop_thread():
            result: dict[str, Any] | None = waiter(task_id, timeout)
            return result
        return self._call(self.results.wait(task_id, timeout))

    async def _cancel(self, task_id: str) -> bool:
        """Cancel queued (never runs) or running (stopped) work."""
        await self._connect()
        record = await self.results.get(task_id)
        if is_terminal(record):
            return False
        if record is None:
            # Never write a "cancelled" record for an id nobody enqueued; workers still hear
            # about it (a running fire-and-forget task has no record).
            await self.broker.send_control({"cmd": "cancel", "id": task_id})
            return False
        now = self.clock.time()
        changed = await self.results.update(
            task_id, {"status": TaskStatus.CANCELLED.value, "finished_at": now}, self.result_ttl
        )
        removed = False
        if not record.get("canvas"):
            # A canvas step stays queued: the worker that takes it sees the cancelled
            # record, skips it and advances its canvas (which would otherwise wait forever).
            removed = await self.broker.cancel(task_id, str(record.get("queue", "")))
        await self.broker.send_control({"cmd": "cancel", "id": task_id})
        return changed is not None or removed

    # -- hooks -----------------------------------------------------------------------
    async def _run_hooks(self, kind: str, event: TaskEvent, task: Task[Any, Any] | None) -> None:
        """Run app hooks of ``kind`` and the task's own ``on_<kind>``; never raises."""
        hooks: list[Hook] = list(self.hooks.get(kind, ()))
        if task is not None:
            own = getattr(task.options, f"on_{kind}", None)
            if own is not None:
                hooks.append(own)
        for hook in hooks:
            try:
                out = hook(event)
                if asyncio.iscoroutine(out):
                    await out
            except Exception:
                log.exception(
                    "%s hook %r failed for task %s[%s]; ignored",
                    kind,
                    getattr(hook, "__qualname__", hook),
                    event.task_name,
                    event.task_id,
                )

    # -- workers ---------------------------------------------------------------------
    def worker(
        self, queues: Sequence[str] | None = None, concurrency: int = 8, **options: Any
    ) -> Worker:
        """A worker for this app (call ``start()`` or use it as a context manager)."""
        from .worker import Worker

        return Worker(self, queues=queues, concurrency=concurrency, **options)

    def run_worker(
        self, queues: Sequence[str] | None = None, concurrency: int = 8, **options: Any
    ) -> None:
        """Run a worker in the foreground until SIGTERM/SIGINT (what the CLI calls)."""
        self.worker(queues=queues, concurrency=concurrency, **options).run()

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


class _BoundTaskDecorator(Protocol):
    """``@app.task(bind=True)``: the context parameter is not part of ``delay``'s signature."""

    @overload
    def __call__(self, fn: Callable[Concatenate[Any, P], Awaitable[R]], /) -> Task[P, R]: ...

    @overload
    def __call__(self, fn: Callable[Concatenate[Any, P], R], /) -> Task[P, R]: ...


class _TaskDecorator:
    def __init__(self, app: App, name: str | None, options: dict[str, Any]) -> None:
        self._app = app
        self._name = name
        # A named task validates at once; an unnamed one when it is applied (still the
        # decorator line), so that the error can name the task.
        if name is not None:
            TaskOptions.build(name, options)
        self._options = options

    @overload
    def __call__(self, fn: Callable[P, Awaitable[R]], /) -> Task[P, R]: ...

    @overload
    def __call__(self, fn: Callable[P, R], /) -> Task[P, R]: ...

    def __call__(self, fn: Callable[..., Any], /) -> Any:
        return self._app._register(fn, self._name, self._options)


def _identity(env: Envelope) -> Envelope:
    return env


def _check_weights(weights: Mapping[str, int] | None, app: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for queue, weight in (weights or {}).items():
        if isinstance(weight, bool) or not isinstance(weight, int) or weight < 1:
            raise ConfigError(f"App({app!r}): queue_weights[{queue!r}] must be an integer >= 1")
        out[check_queue(queue, f"App({app!r})")] = weight
    return out


def _check_limit(value: Any, app: str, option: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"App({app!r}): {option} must be a positive integer, got {value!r}")
    return int(value)


def _check_call_options(name: str, options: Mapping[str, Any]) -> None:
    from .task import CALL_OPTIONS

    unknown = set(options) - CALL_OPTIONS - {"canvas", "parent_id", "root_id"}
    if unknown:
        raise ValueError(f"{name}: unknown option(s): {', '.join(sorted(unknown))}")


def _encode_untyped(
    name: str, args: Sequence[Any], kwargs: Mapping[str, Any]
) -> tuple[list[Any], dict[str, Any]]:
    try:
        return [encode_any(a) for a in args], {k: encode_any(v) for k, v in kwargs.items()}
    except PayloadError as exc:
        raise PayloadError(f"{name}: {exc}") from None


def _eta(name: str, opts: Mapping[str, Any], now: float) -> float | None:
    countdown, eta = opts.get("countdown"), opts.get("eta")
    if countdown is not None and eta is not None:
        raise ValueError(f"{name}: give countdown or eta, not both")
    if countdown is not None:
        if isinstance(countdown, bool) or not isinstance(countdown, int | float) or countdown < 0:
            raise ValueError(f"{name}: countdown must be a non-negative number of seconds")
        return now + float(countdown) if countdown > 0 else None
    if eta is not None:
        return _aware_ts(name, "eta", eta)
    return None


def _aware_ts(name: str, option: str, value: Any) -> float:
    if not isinstance(value, datetime):
        raise ValueError(f"{name}: {option} must be a timezone-aware datetime, got {value!r}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name}: {option} must be timezone-aware (got a naive datetime)")
    return value.timestamp()


def _expires(name: str, value: Any, now: float) -> float | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return _aware_ts(name, "expires", value)
    return now + (check_timeout(value, name, "expires") or 0.0)


def _opt_str(name: str, option: str, value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name}: {option} must be a non-empty string")
    return value


def _headers(name: str, value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise ValueError(f"{name}: headers must map str to str")
    return dict(value)


def _queued_record(env: Envelope) -> dict[str, Any]:
    status = TaskStatus.SCHEDULED if env.eta is not None else TaskStatus.QUEUED
    record = {
        "id": env.id,
        "name": env.task,
        "status": status.value,
        "queue": env.queue,
        "priority": env.priority,
        "attempts": 0,
        "created_at": env.created_at,
    }
    if env.eta is not None:
        record["eta"] = env.eta
    if env.canvas:
        record["canvas"] = True
    return record


def _message(env: Envelope) -> Message:
    return Message(
        id=env.id,
        queue=env.queue,
        body=codec.encode_envelope(env),
        priority=env.priority,
        eta=env.eta,
        max_deliveries=max(1, env.max_retries + 2 - env.attempt),
    )


def _queued_event(env: Envelope) -> TaskEvent:
    status = TaskStatus.SCHEDULED if env.eta is not None else TaskStatus.QUEUED
    return TaskEvent(
        "queued", env.id, env.task, env.queue, status.value, env.attempt, timestamp=env.created_at
    )


def message_for(env: Envelope) -> Message:
    """The broker message for an envelope (used by the worker for re-publishing)."""
    return _message(env)


__all__ += ["message_for"]

