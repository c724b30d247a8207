"""Who may call the gRPC service: the auth hook and bearer tokens from a file.

An auth hook is any callable ``auth(method, metadata) -> str`` (or an ``async def`` one)
given to :func:`taskflow.grpc.serve`. ``method`` is the full gRPC method name
(``/taskflow.v1.WorkerService/EnqueueTasks``), ``metadata`` the call's metadata with
lower-case keys. It returns the caller's identity (logged and written to the audit log,
so never a secret) or raises :class:`Unauthenticated` (no or unknown credentials) or
:class:`PermissionDenied` (known caller, method not allowed).

:class:`TokenFile` is the hook ``taskflow grpc --token-file F`` uses.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError

__all__ = [
    "READ_METHODS",
    "AuthHook",
    "PermissionDenied",
    "TokenFile",
    "Unauthenticated",
    "bearer_token",
]

AuthHook = Callable[[str, Mapping[str, str]], str | Awaitable[str]]
"""``auth(method, metadata) -> identity``; raises :class:`Unauthenticated` or
:class:`PermissionDenied`."""

_SERVICE = "/taskflow.v1.WorkerService/"

READ_METHODS = frozenset(
    {
        _SERVICE + "GetTask",
        _SERVICE + "StreamEvents",
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    }
)
"""The methods a ``read-only`` token may call: they read and change nothing."""

_READ_ONLY = "read-only"


class Unauthenticated(Exception):
    """The call carries no credentials, or unknown ones (``UNAUTHENTICATED``)."""


class PermissionDenied(Exception):
    """The caller is known but may not call this method (``PERMISSION_DENIED``)."""


def bearer_token(metadata: Mapping[str, str]) -> str:
    """The token of an ``authorization: Bearer <token>`` metadata entry; raises
    :class:`Unauthenticated` when there is none."""
    value = metadata.get("authorization", "")
    scheme, _, token = value.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Unauthenticated("missing bearer token (metadata 'authorization: Bearer <token>')")
    return token


@dataclass(frozen=True, slots=True)
class _Entry:
    digest: bytes
    read_only: bool
    identity: str


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class TokenFile:
    """Bearer tokens read from a file: one token per line, optionally followed by
    ``:read-only`` (that token may call only :data:`READ_METHODS`). Blank lines and lines
    starting with ``#`` are skipped.

    Only SHA-256 digests of the tokens are kept in memory; a presented token is compared
    with every digest in constant time. A caller's identity is ``token:<first 8 hex digits
    of the digest>`` (plus ``:read-only``), never the token.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            text = self.path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"--token-file {self.path}: {exc.strerror or exc}") from None
        entries: list[_Entry] = []
        for number, raw in enumerate(text.splitlines(), 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            token, read_only = line, False
            if line.endswith(":" + _READ_ONLY):
                token, read_only = line[: -len(_READ_ONLY) - 1], True
            if not token or any(c.isspace() for c in token):
                raise ConfigError(
                    f"--token-file {self.path}: line {number} is not a token "
                    "(one token per line, optionally followed by ':read-only')"
                )
            digest = _digest(token)
            identity = "token:" + digest.hex()[:8] + (":read-only" if read_only else "")
            entries.append(_Entry(digest, read_only, identity))
        if not entries:
            raise ConfigError(f"--token-file {self.path}: no token in the file")
        self._entries = tuple(entries)

    def __repr__(self) -> str:
        return f"<TokenFile {self.path} ({len(self._entries)} tokens)>"

    def __call__(self, method: str, metadata: Mapping[str, str]) -> str:
        """Authenticate one call (an auth hook)."""
        presented = _digest(bearer_token(metadata))
        match: _Entry | None = None
        for entry in self._entries:  # no early exit: every digest is compared
            if hmac.compare_digest(entry.digest, presented):
                match = entry
        if match is None:
            raise Unauthenticated("unknown bearer token")
        if match.read_only and method not in READ_METHODS:
            raise PermissionDenied(f"a read-only token may not call {method}")
        return match.identity
