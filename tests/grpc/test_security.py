"""Bearer tokens, TLS and mutual TLS, health, reflection and the command's start and stop,
against a real ``taskflow grpc`` process on Redis."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from taskflow.grpc import pb
from tests.grpc.helpers import (
    APP_SPEC,
    ROOT,
    Server,
    add,
    enqueue,
    error_of,
    process_env,
    start_server,
    stop,
    stub,
    taskflow_command,
)
from tests.tls.servers import Pki, make_pki

pytestmark = pytest.mark.integration

WRITER = "writer-token-6c1f0e9a"
READER = "reader-token-93d2b7e4"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A private CA with server and client certificates (made with openssl)."""
    return make_pki(tmp_path_factory.mktemp("grpc-pki"))


@pytest.fixture
def token_server(redis_url: str, tmp_path: Path) -> Iterator[Server]:
    tokens = tmp_path / "tokens"
    tokens.write_text(f"# the service's callers\n{WRITER}\n{READER}:read-only\n")
    running = start_server(redis_url, tmp_path / "grpc.log", ["--token-file", str(tokens)])
    yield running
    stop(running.proc)


def _bearer(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


def test_calls_need_a_known_token_and_read_only_tokens_only_read(token_server: Server) -> None:
    with stub(token_server.target) as client:
        none = error_of(lambda: enqueue(client, add(1, 2)))
        assert none.code() == grpc.StatusCode.UNAUTHENTICATED
        bad = error_of(lambda: enqueue(client, add(1, 2), metadata=_bearer("not-a-token")))
        assert bad.code() == grpc.StatusCode.UNAUTHENTICATED
        denied = error_of(lambda: enqueue(client, add(1, 2), metadata=_bearer(READER)))
        assert denied.code() == grpc.StatusCode.PERMISSION_DENIED
        cancel = error_of(
            lambda: client.CancelTask(pb.CancelTaskRequest(id="x"), metadata=_bearer(READER))
        )
        assert cancel.code() == grpc.StatusCode.PERMISSION_DENIED

        (task_id,) = enqueue(client, add(1, 2), metadata=_bearer(WRITER))
        record = client.GetTask(pb.GetTaskRequest(id=task_id), metadata=_bearer(READER))
        assert record.id == task_id
        events = client.StreamEvents(pb.StreamEventsRequest(limit=1), metadata=_bearer(READER))
        assert dict(events.initial_metadata())["taskflow-subscribed"] == "1"
        events.cancel()
        assert client.CancelTask(pb.CancelTaskRequest(id=task_id), metadata=_bearer(WRITER))
    log = token_server.output()
    # Each call is logged with its method, status and caller; never with a token.
    assert "/taskflow.v1.WorkerService/EnqueueTasks UNAUTHENTICATED" in log
    assert "/taskflow.v1.WorkerService/EnqueueTasks PERMISSION_DENIED" in log
    assert "caller=token:" in log
    assert WRITER not in log and READER not in log


def test_health_answers_without_a_token_and_reflection_lists_the_service(
    token_server: Server,
) -> None:
    channel = grpc.insecure_channel(token_server.target)
    try:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "taskflow.v1.WorkerService"):
            reply = health.Check(health_pb2.HealthCheckRequest(service=service))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        reflect = reflection_pb2_grpc.ServerReflectionStub(channel)
        ask = reflection_pb2.ServerReflectionRequest(list_services="")
        refused = error_of(lambda: list(reflect.ServerReflectionInfo(iter([ask]))))
        assert refused.code() == grpc.StatusCode.UNAUTHENTICATED
        (answer,) = reflect.ServerReflectionInfo(iter([ask]), metadata=_bearer(READER))
        names = {s.name for s in answer.list_services_response.service}
        assert {"taskflow.v1.WorkerService", "grpc.health.v1.Health"} <= names
    finally:
        channel.close()


def test_tls_serves_clients_that_trust_its_ca(redis_url: str, tmp_path: Path, pki: Pki) -> None:
    args = ["--insecure-no-auth", "--tls-cert", str(pki.server_cert), "--tls-key"]
    server = start_server(redis_url, tmp_path / "grpc.log", [*args, str(pki.server_key)])
    try:
        trusting = grpc.ssl_channel_credentials(root_certificates=pki.ca.read_bytes())
        with stub(server.target, trusting) as client:
            assert len(enqueue(client, add(1, 2), timeout=10)) == 1
        other = grpc.ssl_channel_credentials(root_certificates=pki.other_ca.read_bytes())
        with stub(server.target, other) as client:
            refused = error_of(lambda: enqueue(client, add(1, 2), timeout=10))
            assert refused.code() == grpc.StatusCode.UNAVAILABLE
        with stub(server.target) as plain:
            refused = error_of(lambda: enqueue(plain, add(1, 2), timeout=10))
            assert refused.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        stop(server.proc)


def test_mutual_tls_needs_a_client_certificate(redis_url: str, tmp_path: Path, pki: Pki) -> None:
    args = [
        "--insecure-no-auth",
        "--tls-cert",
        str(pki.server_cert),
        "--tls-key",
        str(pki.server_key),
        "--tls-client-ca",
        str(pki.ca),
    ]
    server = start_server(redis_url, tmp_path / "grpc.log", args)
    try:
        ca = pki.ca.read_bytes()
        with stub(server.target, grpc.ssl_channel_credentials(root_certificates=ca)) as client:
            refused = error_of(lambda: enqueue(client, add(1, 2), timeout=10))
            assert refused.code() == grpc.StatusCode.UNAVAILABLE
        with_cert = grpc.ssl_channel_credentials(
            root_certificates=ca,
            private_key=pki.client_key.read_bytes(),
            certificate_chain=pki.client_cert.read_bytes(),
        )
        with stub(server.target, with_cert) as client:
            assert len(enqueue(client, add(1, 2), timeout=10)) == 1
    finally:
        stop(server.proc)


def test_the_command_refuses_to_start_without_auth(redis_url: str) -> None:
    done = subprocess.run(
        taskflow_command("grpc", "-A", APP_SPEC, "--port", "0"),
        cwd=ROOT,
        env=process_env(redis_url),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "--token-file" in done.stderr and "--insecure-no-auth" in done.stderr


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_the_command_stops_cleanly_on_a_signal(redis_url: str, tmp_path: Path, sig: int) -> None:
    server = start_server(redis_url, tmp_path / "grpc.log")
    with stub(server.target) as client:
        assert len(enqueue(client, add(1, 2))) == 1
    assert stop(server.proc, sig) == 0
    assert "stopped" in server.output()
