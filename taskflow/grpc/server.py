"""The gRPC server: WorkerService, the standard health service, server reflection, and
an interceptor that authenticates and logs every call.

:class:`GrpcServer` runs on an asyncio loop (``await start()`` / ``await stop()``);
:func:`serve` runs one in the foreground until SIGTERM or SIGINT.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import signal
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from ..app import App
from ..errors import ConfigError
from ._gen import worker_pb2 as pb
from ._gen import worker_pb2_grpc as pb_grpc
from .auth import AuthHook, PermissionDenied, Unauthenticated
from .context import caller
from .hub import EventHub
from .service import WorkerService, metadata_dict

__all__ = ["SERVICE_NAME", "GrpcServer", "TlsFiles", "serve"]

log = logging.getLogger("taskflow.grpc")

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["WorkerService"].full_name
"""``taskflow.v1.WorkerService``."""

_HEALTH = "/grpc.health.v1.Health/"


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """PEM files for TLS: the server's certificate and key, and for mutual TLS the CA
    that client certificates must chain to (then a client without one is refused)."""

    cert: Path
    key: Path
    client_ca: Path | None = None

    def credentials(self) -> grpc.ServerCredentials:
        """The server credentials; ConfigError naming an unreadable file."""
        key, cert = _read(self.key, "--tls-key"), _read(self.cert, "--tls-cert")
        ca = _read(self.client_ca, "--tls-client-ca") if self.client_ca else None
        return grpc.ssl_server_credentials(
            [(key, cert)], root_certificates=ca, require_client_auth=ca is not None
        )


def _read(path: Path, flag: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{flag} {path}: {exc.strerror or exc}") from None


class _Gate(grpc.aio.ServerInterceptor):
    """Authenticates every call but health checks, sets :data:`caller`, and logs method,
    status, duration and caller of each call (never a request or a token)."""

    def __init__(self, auth: AuthHook | None) -> None:
        self.auth = auth

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method
        metadata = metadata_dict(handler_call_details.invocation_metadata)
        call = _Call(self, method, metadata)
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                call.wrap(handler.unary_unary),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                call.wrap(handler.unary_stream),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_stream is not None:
            return grpc.stream_stream_rpc_method_handler(
                call.wrap(handler.stream_stream),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler  # client streaming: WorkerService has none

    def identify(self, method: str, metadata: Mapping[str, str]) -> str | Awaitable[str]:
        """The caller's identity (or an awaitable of it); raises Unauthenticated /
        PermissionDenied."""
        if self.auth is None or method.startswith(_HEALTH):
            return "anonymous"
        return self.auth(method, metadata)


def _identity_problem(identity: object) -> str:
    """What is wrong with what an auth hook returned ('' if it is an identity)."""
    if not isinstance(identity, str):
        # A hook that forgot its ``return`` (or returns None to say no) must not let the
        # call through as caller ``None``.
        return f"returned {type(identity).__name__}"
    if not identity or not identity.isprintable():
        # The identity goes into the call's log line and the audit trail.
        return "returned an empty text or one with control characters"
    return ""


class _Call:
    """One call's auth check and log line around its handler."""

    def __init__(self, gate: _Gate, method: str, metadata: Mapping[str, str]) -> None:
        self.gate = gate
        self.method = method
        self.metadata = metadata
        self.identity = "-"
        self.started = time.perf_counter()

    def wrap(self, behavior: Callable[..., Any]) -> Callable[..., Any]:
        """``behavior`` behind the auth check, with a log line when it ends."""
        if inspect.isasyncgenfunction(behavior):

            async def stream(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
                token = await self.enter(context)
                try:
                    async for item in behavior(request, context):
                        yield item
                except BaseException as exc:
                    self.done(context, exc)
                    raise
                finally:
                    caller.reset(token)
                self.done(context, None)

            return stream

        async def unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            token = await self.enter(context)
            try:
                result = behavior(request, context)
                if inspect.isawaitable(result):
                    result = await result
            except BaseException as exc:
                self.done(context, exc)
                raise
            finally:
                caller.reset(token)
            self.done(context, None)
            return result

        return unary

    async def enter(self, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        try:
            identity: object = self.gate.identify(self.method, self.metadata)
            if inspect.isawaitable(identity):
                identity = await identity  # an ``async def`` hook
        except Unauthenticated as exc:
            self.log(grpc.StatusCode.UNAUTHENTICATED)
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, str(exc))
        except PermissionDenied as exc:
            self.log(grpc.StatusCode.PERMISSION_DENIED)
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, str(exc))
        except Exception as exc:
            # Refused, never let through. Not the exception's text: a failed lookup's
            # KeyError would carry the token.
            await self.refuse(context, f"raised {type(exc).__name__}")
        problem = _identity_problem(identity)
        if problem:
            await self.refuse(context, f"{problem}, not the caller's identity")
        self.identity = str(identity)
        return caller.set(self.identity)

    async def refuse(self, context: grpc.aio.ServicerContext[Any, Any], what: str) -> None:
        """End the call: the auth hook named no caller."""
        log.error("%s: the auth hook %s; the call is refused", self.method, what)
        self.log(grpc.StatusCode.INTERNAL)
        await context.abort(grpc.StatusCode.INTERNAL, "the server could not authenticate the call")

    def done(self, context: grpc.aio.ServicerContext[Any, Any], exc: BaseException | None) -> None:
        if isinstance(exc, asyncio.CancelledError):
            self.log(grpc.StatusCode.CANCELLED)
            return
        code = context.code()
        if isinstance(code, grpc.StatusCode):
            self.log(code)
        else:
            self.log(grpc.StatusCode.OK if exc is None else grpc.StatusCode.UNKNOWN)

    def log(self, code: grpc.StatusCode) -> None:
        ms = (time.perf_counter() - self.started) * 1000
        level = logging.DEBUG if self.method.startswith(_HEALTH) else logging.INFO
        log.log(level, "%s %s %.1fms caller=%s", self.method, code.name, ms, self.identity)


class GrpcServer:
    """``taskflow.v1.WorkerService`` for ``app``, with health and reflection.

    ``auth`` is the auth hook (:mod:`taskflow.grpc.auth`); without one every call is
    accepted, which must be asked for with ``insecure_no_auth=True``. ``port=0`` picks a
    free port (:attr:`port` after :meth:`start`). ``stream_buffer`` is a stream's buffer
    when the client does not ask for one, ``max_stream_buffer`` the most it may ask for.
    """

    def __init__(
        self,
        app: App,
        *,
        host: str = "127.0.0.1",
        port: int = 50051,
        auth: AuthHook | None = None,
        insecure_no_auth: bool = False,
        tls: TlsFiles | None = None,
        stream_buffer: int = 100,
        max_stream_buffer: int = 10_000,
        connect_timeout: float = 30.0,
    ) -> None:
        if auth is None and not insecure_no_auth:
            raise ConfigError(
                "the gRPC service needs an auth hook (auth=..., or --token-file on the "
                "command line); pass insecure_no_auth=True to serve without one"
            )
        self.app = app
        self.host = host
        self.port = port
        self.tls = tls
        self.connect_timeout = connect_timeout
        self.hub = EventHub(app)
        self.service = WorkerService(
            app, self.hub, stream_buffer=stream_buffer, max_stream_buffer=max_stream_buffer
        )
        self.health = health.aio.HealthServicer()
        self._gate = _Gate(auth)
        self._server: grpc.aio.Server | None = None

    @property
    def address(self) -> str:
        """``host:port`` the server listens on."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    async def start(self) -> None:
        """Connect the app's backends, then listen (BrokerError / ConfigError / OSError)."""
        kernel = self.app.kernel
        await asyncio.wait_for(kernel.acall(kernel.connect()), self.connect_timeout)
        server = grpc.aio.server(interceptors=[self._gate])
        pb_grpc.add_WorkerServiceServicer_to_server(self.service, server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(
            [
                SERVICE_NAME,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ],
            server,
        )
        target = f"{self.address.rsplit(':', 1)[0]}:{self.port}"
        try:
            if self.tls is not None:
                bound = server.add_secure_port(target, self.tls.credentials())
            else:
                bound = server.add_insecure_port(target)
        except RuntimeError as exc:
            raise OSError(f"cannot listen on {target}: {exc}") from None
        self.port = bound
        await server.start()
        self._server = server
        for name in ("", SERVICE_NAME):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        scheme = "grpcs" if self.tls else "grpc"
        log.info("gRPC service of app %s on %s://%s", self.app.name, scheme, self.address)

    async def stop(self, grace: float = 5.0) -> None:
        """Report NOT_SERVING, end the event streams, let calls finish within ``grace``
        seconds (sends in progress always finish), then stop."""
        server, self._server = self._server, None
        if server is None:
            return
        await self.health.enter_graceful_shutdown()
        await self.hub.stop()
        await server.stop(grace)
        await self.service.drain(grace)
        log.info("gRPC service of app %s stopped", self.app.name)

    async def wait(self) -> None:
        """Until the server stops."""
        if self._server is not None:
            await self._server.wait_for_termination()


def serve(
    app: App,
    *,
    host: str = "127.0.0.1",
    port: int = 50051,
    auth: AuthHook | None = None,
    insecure_no_auth: bool = False,
    tls: TlsFiles | None = None,
    stream_buffer: int = 100,
    max_stream_buffer: int = 10_000,
    grace: float = 5.0,
    on_ready: Callable[[GrpcServer], None] | None = None,
) -> None:
    """Serve ``taskflow.v1.WorkerService`` for ``app`` until SIGTERM or SIGINT, then stop
    cleanly (see :class:`GrpcServer`). ``on_ready`` is called once the server listens.
    Must run in the main thread (signal handlers)."""
    server = GrpcServer(
        app,
        host=host,
        port=port,
        auth=auth,
        insecure_no_auth=insecure_no_auth,
        tls=tls,
        stream_buffer=stream_buffer,
        max_stream_buffer=max_stream_buffer,
    )
    asyncio.run(_run(server, grace, on_ready))


async def _run(
    server: GrpcServer, grace: float, on_ready: Callable[[GrpcServer], None] | None
) -> None:
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    try:
        await server.start()
        if on_ready is not None:
            on_ready(server)
        await stopping.wait()
        log.info("stopping the gRPC service")
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await server.stop(grace)
