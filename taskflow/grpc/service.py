"""``taskflow.v1.WorkerService``: the servicer, over the App and its operations API.

Status codes (docs/grpc.md): an unregistered task name is ``NOT_FOUND``; an argument
that does not fit the task's signature, a protobuf ``Any`` of another type than the
parameter's annotation, or a bad option is ``INVALID_ARGUMENT`` naming the task and the
parameter; an idempotency key reused with other arguments is ``ALREADY_EXISTS``; a full
queue is ``RESOURCE_EXHAUSTED``; an unreachable backend is ``UNAVAILABLE``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping
from datetime import datetime
from typing import Any, NoReturn

import grpc
import orjson
from google.protobuf.timestamp_pb2 import Timestamp

from .. import codec
from ..app import App
from ..errors import (
    AuditNotWritten,
    BrokerError,
    IdempotencyConflict,
    NotFound,
    PayloadError,
    QueueFull,
)
from ..eventbus import TaskEvent
from ..kernel.prepare import Prepared
from ..kernel.taskdef import TaskDef
from ..operations import TaskInfo
from ._gen import worker_pb2 as pb
from ._gen import worker_pb2_grpc as pb_grpc
from .context import caller
from .hub import EventHub, Filter
from .params import ParamTypes

__all__ = ["WorkerService"]

log = logging.getLogger("taskflow.grpc")

Context = grpc.aio.ServicerContext[Any, Any]


class _Reject(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _status(exc: BaseException) -> grpc.StatusCode | None:
    """The status a taskflow error becomes (None: an internal error)."""
    if isinstance(exc, NotFound):
        return grpc.StatusCode.NOT_FOUND
    if isinstance(exc, IdempotencyConflict):
        return grpc.StatusCode.ALREADY_EXISTS
    if isinstance(exc, (PayloadError, ValueError)):
        return grpc.StatusCode.INVALID_ARGUMENT
    if isinstance(exc, QueueFull):
        return grpc.StatusCode.RESOURCE_EXHAUSTED
    if isinstance(exc, AuditNotWritten):
        # The action took effect: not UNAVAILABLE, which clients retry on their own.
        return grpc.StatusCode.INTERNAL
    if isinstance(exc, BrokerError):
        return grpc.StatusCode.UNAVAILABLE
    return None


async def _abort(context: Context, exc: BaseException, what: str) -> NoReturn:
    if isinstance(exc, _Reject):
        await context.abort(exc.code, exc.message)
    code = _status(exc)
    if code is None:
        # The message may hold anything; the log names the type only, never the payload.
        log.error("%s failed with %s", what, type(exc).__name__)
        await context.abort(grpc.StatusCode.INTERNAL, f"{what} failed: {type(exc).__name__}")
    await context.abort(code, str(exc))


def _ts(value: datetime | float | None) -> Timestamp | None:
    if value is None:
        return None
    stamp = Timestamp()
    if isinstance(value, datetime):
        stamp.FromDatetime(value)
    else:
        stamp.FromNanoseconds(int(value * 1e9))
    return stamp


def _record(info: TaskInfo) -> pb.TaskRecord:
    history = [
        pb.Attempt(
            status=str(h.get("status") or ""),
            attempts=int(h.get("attempts") or 0),
            error={str(k): str(v) for k, v in (h.get("error") or {}).items()},
            finished_at=_ts(h.get("finished_at")),
            worker=str(h.get("worker") or ""),
        )
        for h in info.history
    ]
    return pb.TaskRecord(
        id=info.id,
        task=info.task,
        queue=info.queue,
        state=info.state,
        status=info.status or "",
        priority=info.priority,
        attempts=info.attempts,
        error=dict(info.error or {}),
        eta=_ts(info.eta),
        created_at=_ts(info.created_at),
        started_at=_ts(info.started_at),
        finished_at=_ts(info.finished_at),
        worker=info.worker or "",
        history=history,
    )


class WorkerService(pb_grpc.WorkerServiceServicer):
    """The servicer of ``taskflow.v1.WorkerService`` for ``app``."""

    def __init__(
        self, app: App, hub: EventHub, *, stream_buffer: int = 100, max_stream_buffer: int = 10_000
    ) -> None:
        self.app = app
        self.hub = hub
        self.stream_buffer = stream_buffer
        self.max_stream_buffer = max_stream_buffer
        self._params: dict[str, ParamTypes] = {}
        self._sending: set[asyncio.Future[list[str]]] = set()

    # -- EnqueueTasks ------------------------------------------------------------------
    async def EnqueueTasks(
        self, request: pb.EnqueueTasksRequest, context: Context
    ) -> pb.EnqueueTasksResponse:
        """Send the tasks, all or nothing; their ids in order."""
        try:
            if not request.tasks:
                raise _Reject(grpc.StatusCode.INVALID_ARGUMENT, "EnqueueTasks: no tasks given")
            prepared = [self._prepare(item) for item in request.tasks]
            ids = await self._send(prepared)
        except Exception as exc:
            await _abort(context, exc, "EnqueueTasks")
        return pb.EnqueueTasksResponse(ids=ids)

    async def _send(self, prepared: list[Prepared]) -> list[str]:
        # The send runs to its end on the app's loop even when the client's deadline
        # passes or it cancels: the tasks are enqueued or not, never half.
        kernel = self.app.kernel
        future = asyncio.ensure_future(kernel.acall(kernel.enqueuer.enqueue(prepared)))
        self._sending.add(future)
        future.add_done_callback(self._sent)
        return await asyncio.shield(future)

    def _sent(self, future: asyncio.Future[list[str]]) -> None:
        self._sending.discard(future)
        if not future.cancelled() and future.exception() is not None:
            log.debug("an enqueue ended with %s", type(future.exception()).__name__)

    async def drain(self, timeout: float) -> None:
        """Wait (bounded) for sends still running (the server stops)."""
        if self._sending:
            await asyncio.wait(set(self._sending), timeout=timeout)

    def _task(self, name: str) -> TaskDef:
        task = self.app.registry.get(name)
        if task is None:
            raise _Reject(
                grpc.StatusCode.NOT_FOUND,
                f"task {name!r} is not registered in app {self.app.name!r}",
            )
        return task

    def _types(self, task: TaskDef) -> ParamTypes:
        types = self._params.get(task.name)
        if types is None:
            types = self._params[task.name] = ParamTypes(task)
        return types

    def _prepare(self, item: pb.TaskRequest) -> Prepared:
        if not item.task:
            raise _Reject(grpc.StatusCode.INVALID_ARGUMENT, "a task request needs a task name")
        task = self._task(item.task)
        types = self._types(task)
        args = [self._value(types, types.positional(i), a) for i, a in enumerate(item.args)]
        kwargs = {k: self._value(types, types.keyword(k), a) for k, a in item.kwargs.items()}
        opts: dict[str, Any] = {}
        if item.queue:
            opts["queue"] = item.queue
        if item.HasField("priority"):
            opts["priority"] = item.priority
        if item.HasField("countdown"):
            opts["countdown"] = item.countdown
        if item.idempotency_key:
            opts["idempotency_key"] = item.idempotency_key
        if item.metadata:
            opts["headers"] = dict(item.metadata)
        prepared = self.app.kernel.prepare(item.task, args, kwargs, opts, task)
        if item.correlation_id:
            prepared.envelope = prepared.envelope.replace(correlation_id=item.correlation_id)
        return prepared

    def _value(self, types: ParamTypes, param: tuple[str, Any], arg: pb.Argument) -> Any:
        label, hint = param
        which = arg.WhichOneof("value")
        where = f"{types.task}({label})"
        if which == "json":
            try:
                return orjson.loads(arg.json)
            except orjson.JSONDecodeError as exc:
                raise _Reject(
                    grpc.StatusCode.INVALID_ARGUMENT, f"{where}: the json is not valid: {exc}"
                ) from None
        if which == "message":
            try:
                return types.unpack(label, hint, arg.message.type_url, arg.message.value)
            except ValueError as exc:
                raise _Reject(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None
        raise _Reject(grpc.StatusCode.INVALID_ARGUMENT, f"{where}: set json or message")

    # -- GetTask / CancelTask ------------------------------------------------------------
    async def GetTask(self, request: pb.GetTaskRequest, context: Context) -> pb.TaskRecord:
        """The task's record; NOT_FOUND for an unknown id."""
        try:
            if not request.id:
                raise _Reject(grpc.StatusCode.INVALID_ARGUMENT, "GetTask: no id given")
            info = await self.app.admin.atask(request.id)
        except Exception as exc:
            await _abort(context, exc, "GetTask")
        return _record(info)

    async def CancelTask(
        self, request: pb.CancelTaskRequest, context: Context
    ) -> pb.CancelTaskResponse:
        """Cancel the task (audited as the caller); NOT_FOUND for an unknown id."""
        try:
            if not request.id:
                raise _Reject(grpc.StatusCode.INVALID_ARGUMENT, "CancelTask: no id given")
            admin = self.app.admin.as_actor(f"grpc:{caller.get()}")
            done = await admin.acancel(request.id)
        except Exception as exc:
            await _abort(context, exc, "CancelTask")
        return pb.CancelTaskResponse(cancelled=done)

    # -- StreamEvents --------------------------------------------------------------------
    async def StreamEvents(
        self, request: pb.StreamEventsRequest, context: Context
    ) -> AsyncIterator[pb.TaskEvent]:
        """Finish events that pass the request's filter, until the client goes, the
        ``limit`` or ``idle_timeout`` is reached, or the server stops. The trailing
        metadata ``taskflow-dropped`` counts the events this stream lost."""
        size = request.buffer or self.stream_buffer
        if size > self.max_stream_buffer:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"StreamEvents: buffer {size} is over the server's maximum "
                f"{self.max_stream_buffer}",
            )
        select = Filter(frozenset(request.tasks), frozenset(request.queues), frozenset(request.ids))
        listener = await self.hub.open(select, size)
        sent = 0
        try:
            # Headers now: a client that waits for them knows its stream is subscribed.
            await context.send_initial_metadata((("taskflow-subscribed", "1"),))
            idle = request.idle_timeout or None
            while not request.limit or sent < request.limit:
                event = await listener.next(idle)
                if event is None:
                    break
                yield self._event(event, listener.dropped)
                sent += 1
        finally:
            self.hub.remove(listener)
            context.set_trailing_metadata((("taskflow-dropped", str(listener.dropped)),))

    def _event(self, event: TaskEvent, dropped: int) -> pb.TaskEvent:
        return pb.TaskEvent(
            kind=event.kind,
            task_id=event.task_id,
            task=event.task_name,
            queue=event.queue,
            status=event.status,
            attempt=event.attempt,
            result_json=self._result_json(event),
            error=dict(event.error or {}),
            timestamp=_ts(event.timestamp or None),
            duration=event.duration or 0.0,
            root_id=event.root_id or "",
            parent_id=event.parent_id or "",
            dropped=dropped,
        )

    def _result_json(self, event: TaskEvent) -> str:
        if event.result is None:
            return ""
        task = self.app.registry.get(event.task_name)
        try:
            value = task.schema.encode_result(event.result) if task else event.result
            return codec.dumps(value).decode()
        except Exception:  # a result that will not encode still makes an event
            return ""


def metadata_dict(metadata: Any) -> Mapping[str, str]:
    """A call's invocation metadata as a dict with lower-case keys (text values only)."""
    out: dict[str, str] = {}
    for key, value in metadata or ():
        if isinstance(value, str):
            out[key.lower()] = value
    return out
