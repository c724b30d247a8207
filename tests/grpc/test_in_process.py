"""The server embedded in a program (``GrpcServer``) on a memory app: the auth hook, the
audit of its callers, and sends that outlive their client's deadline."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import threading
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping, Sequence
from typing import Any

import grpc
import pytest

from taskflow import App
from taskflow.brokers import MemoryBroker
from taskflow.brokers.base import Message
from taskflow.errors import BrokerError, ConfigError
from taskflow.grpc import GrpcServer, PermissionDenied, Unauthenticated, pb, pb_grpc
from tests.grpc.helpers import add


class GatedBroker(MemoryBroker):
    """A memory broker whose publish waits until the test opens the gate."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.gate.set()

    async def publish(self, messages: Sequence[Message]) -> None:
        while not self.gate.is_set():
            await asyncio.sleep(0.005)
        await super().publish(messages)


def _run(scenario: Coroutine[Any, Any, None]) -> None:
    asyncio.run(scenario)
    # grpc.aio's poller thread ends once its last channel and server are collected; they
    # sit in reference cycles (an RpcError keeps its call), so collect them now.
    gc.collect()


@contextlib.asynccontextmanager
async def _serving(
    app: App, **options: Any
) -> AsyncIterator[tuple[GrpcServer, pb_grpc.WorkerServiceStub]]:
    """``app`` served in this process (a free port), and a client of it."""
    server = GrpcServer(app, port=0, **options)
    await server.start()
    try:
        async with grpc.aio.insecure_channel(server.address) as channel:
            yield server, pb_grpc.WorkerServiceStub(channel)
    finally:
        await server.stop()


def _run_on(app: App, scenario: Callable[[App], Coroutine[Any, Any, None]]) -> None:
    """Run ``scenario(app)``, then close the app."""
    try:
        _run(scenario(app))
    finally:
        app.close()


def _app(broker: MemoryBroker | None = None) -> App:
    application = App("inproc", broker=broker or MemoryBroker())

    @application.task(name="g.add")
    def add_task(x: int, y: int) -> int:
        return x + y

    return application


def test_the_server_refuses_to_run_without_auth_unless_asked() -> None:
    app = _app()
    try:
        with pytest.raises(ConfigError, match="insecure_no_auth"):
            GrpcServer(app)
    finally:
        app.close()


def test_the_auth_hook_decides_and_the_audit_names_the_caller() -> None:
    seen: list[tuple[str, str]] = []

    def auth(method: str, metadata: Mapping[str, str]) -> str:
        seen.append((method, metadata.get("x-user", "")))
        user = metadata.get("x-user")
        if user is None:
            raise Unauthenticated("who are you?")
        if method.endswith("/CancelTask") and user != "ops":
            raise PermissionDenied("only ops may cancel")
        return user

    async def scenario(app: App) -> None:
        async with _serving(app, auth=auth) as (_, client):
            with pytest.raises(grpc.aio.AioRpcError) as nobody:
                await client.EnqueueTasks(pb.EnqueueTasksRequest(tasks=[add(1, 2)]))
            assert nobody.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert nobody.value.details() == "who are you?"
            sent = await client.EnqueueTasks(
                pb.EnqueueTasksRequest(tasks=[add(1, 2, countdown=600.0)]),
                metadata=(("x-user", "dev"),),
            )
            (task_id,) = sent.ids
            cancel = pb.CancelTaskRequest(id=task_id)
            with pytest.raises(grpc.aio.AioRpcError) as denied:
                await client.CancelTask(cancel, metadata=(("x-user", "dev"),))
            assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
            done = await client.CancelTask(cancel, metadata=(("x-user", "ops"),))
            assert done.cancelled
        (entry,) = [e for e in await app.admin.aaudit() if e.action == "cancel"]
        assert entry.actor == "grpc:ops"
        assert entry.ids == [task_id]

    _run_on(_app(), scenario)
    assert seen[0] == ("/taskflow.v1.WorkerService/EnqueueTasks", "")


@pytest.mark.parametrize("answer", [None, "", "ops\nforged line", 5, "raise", "coroutine"])
def test_an_auth_hook_that_names_no_caller_refuses_the_call(
    answer: object, caplog: pytest.LogCaptureFixture
) -> None:
    # A hook that forgot its ``return`` let every call through as caller None.
    def auth(method: str, metadata: Mapping[str, str]) -> Any:
        if answer == "raise":
            raise KeyError("token-4f2a")  # a lookup of the caller's token that failed
        if answer == "coroutine":
            return asyncio.sleep(0)  # awaited: an async hook's answer, here None
        return answer

    async def scenario(app: App) -> None:
        async with _serving(app, auth=auth) as (_, client):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await client.EnqueueTasks(pb.EnqueueTasksRequest(tasks=[add(1, 2)]))
            assert refused.value.code() == grpc.StatusCode.INTERNAL
            assert refused.value.details() == "the server could not authenticate the call"
        assert [q.ready for q in await app.admin.aqueues()] in ([], [0])

    with caplog.at_level("INFO", logger="taskflow.grpc"):
        _run_on(_app(), scenario)
    [error] = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert error.startswith("/taskflow.v1.WorkerService/EnqueueTasks: the auth hook ")
    assert error.endswith("; the call is refused")
    assert "token-4f2a" not in caplog.text and "forged" not in caplog.text


def test_an_async_auth_hook_is_awaited() -> None:
    async def auth(method: str, metadata: Mapping[str, str]) -> str:
        await asyncio.sleep(0)
        if metadata.get("x-user") != "ops":
            raise Unauthenticated("who are you?")
        return "ops"

    async def scenario(app: App) -> None:
        async with _serving(app, auth=auth) as (_, client):
            with pytest.raises(grpc.aio.AioRpcError) as nobody:
                await client.EnqueueTasks(pb.EnqueueTasksRequest(tasks=[add(1, 2)]))
            assert nobody.value.code() == grpc.StatusCode.UNAUTHENTICATED
            sent = await client.EnqueueTasks(
                pb.EnqueueTasksRequest(tasks=[add(1, 2, countdown=600.0)]),
                metadata=(("x-user", "ops"),),
            )
            await client.CancelTask(
                pb.CancelTaskRequest(id=sent.ids[0]), metadata=(("x-user", "ops"),)
            )
        (entry,) = [e for e in await app.admin.aaudit() if e.action == "cancel"]
        assert entry.actor == "grpc:ops"

    _run_on(_app(), scenario)


def test_a_cancel_whose_audit_is_refused_is_internal_and_says_it_took_effect(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def refused(entry: dict[str, Any], *, retention: float) -> None:
        raise BrokerError("OOM command not allowed when used memory > 'maxmemory'")

    async def scenario(app: App) -> None:
        async with _serving(app, insecure_no_auth=True) as (_, client):
            sent = await client.EnqueueTasks(
                pb.EnqueueTasksRequest(tasks=[add(1, 2, countdown=600.0)])
            )
            (task_id,) = sent.ids
            monkeypatch.setattr(app.kernel.results, "add_audit", refused)
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await client.CancelTask(pb.CancelTaskRequest(id=task_id))
            # Not UNAVAILABLE, which clients retry on their own.
            assert failed.value.code() == grpc.StatusCode.INTERNAL
            assert "cancel on queue 'default' took effect (1 task)" in str(failed.value.details())
        assert (await app.admin.atask(task_id)).state == "cancelled"

    _run_on(_app(), scenario)


def test_a_client_deadline_never_cancels_a_send_in_progress() -> None:
    broker = GatedBroker()

    async def scenario(app: App) -> None:
        async with _serving(app, insecure_no_auth=True) as (server, client):
            broker.gate.clear()
            request = pb.EnqueueTasksRequest(tasks=[add(1, 2), add(3, 4)])
            with pytest.raises(grpc.aio.AioRpcError) as late:
                await client.EnqueueTasks(request, timeout=0.3)
            assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            broker.gate.set()
            await server.service.drain(10.0)
        (queue,) = [q for q in await app.admin.aqueues() if q.name == "default"]
        assert queue.ready == 2

    _run_on(_app(broker), scenario)
