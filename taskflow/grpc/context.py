"""The authenticated caller of the gRPC call being served (set by the interceptor)."""

from __future__ import annotations

from contextvars import ContextVar

__all__ = ["caller"]

caller: ContextVar[str] = ContextVar("taskflow_grpc_caller", default="anonymous")
"""The identity the auth hook returned for the current call (``anonymous`` without auth)."""
