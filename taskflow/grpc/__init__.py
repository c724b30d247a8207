"""The gRPC service: ``taskflow.v1.WorkerService`` over an App (``docs/grpc.md``).

Needs the ``grpc`` extra (``pip install 'taskflow-queue[grpc]'``). The ``.proto`` ships in
the package (``taskflow/grpc/proto/taskflow/v1/worker.proto``); the generated modules are
``taskflow.grpc.pb`` (messages) and ``taskflow.grpc.pb_grpc`` (stub and servicer).
"""

from __future__ import annotations

try:
    import grpc as _grpc  # noqa: F401 -- checks the extra is installed
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "taskflow.grpc needs the grpc extra: pip install 'taskflow-queue[grpc]'"
    ) from exc

from ._gen import worker_pb2 as pb
from ._gen import worker_pb2_grpc as pb_grpc
from .auth import AuthHook, PermissionDenied, TokenFile, Unauthenticated
from .server import SERVICE_NAME, GrpcServer, TlsFiles, serve

__all__ = [
    "SERVICE_NAME",
    "AuthHook",
    "GrpcServer",
    "PermissionDenied",
    "TlsFiles",
    "TokenFile",
    "Unauthenticated",
    "pb",
    "pb_grpc",
    "serve",
]
