"""Envelope codec: :class:`~taskflow.message.Envelope` <-> bytes (JSON, see docs/protocol.md).

The payload inside is already JSON-safe (see :mod:`taskflow.payload`), so one JSON pass
encodes the whole message.
"""

from __future__ import annotations

from typing import Any

import orjson

from .errors import PayloadError
from .message import PROTOCOL_VERSION, Envelope

__all__ = ["EnvelopeError", "decode_envelope", "dumps", "encode_envelope", "loads"]


class EnvelopeError(PayloadError):
    """Bytes that are not a valid taskflow envelope."""


_OPTIONAL = (
    "eta",
    "expires",
    "timeout",
    "idempotency_key",
    "correlation_id",
    "parent_id",
    "root_id",
    "canvas",
)


def dumps(value: Any) -> bytes:
    """Serialize JSON-safe ``value`` to compact JSON bytes."""
    return orjson.dumps(value)


def loads(data: bytes | str) -> Any:
    """Parse JSON bytes."""
    return orjson.loads(data)


def encode_envelope(env: Envelope) -> bytes:
    """Encode an envelope to its JSON wire form; optional fields at their default are omitted."""
    doc: dict[str, Any] = {
        "v": env.v,
        "id": env.id,
        "task": env.task,
        "queue": env.queue,
        "args": env.args,
        "kwargs": env.kwargs,
        "created_at": env.created_at,
    }
    # Fields at their default value are left out (the decoder restores them).
    if env.priority:
        doc["priority"] = env.priority
    if env.attempt != 1:
        doc["attempt"] = env.attempt
    if env.max_retries:
        doc["max_retries"] = env.max_retries
    if env.headers:
        doc["headers"] = env.headers
    if env.content_type != "application/json":
        doc["content_type"] = env.content_type
    for name in _OPTIONAL:
        value = getattr(env, name)
        if value is not None:
            doc[name] = value
    try:
        return orjson.dumps(doc)
    except TypeError as exc:
        raise PayloadError(f"{env.task}: envelope is not JSON-serializable: {exc}") from None


def _check(doc: dict[str, Any]) -> None:
    version = doc.get("v")
    if version != PROTOCOL_VERSION:
        raise EnvelopeError(f"unsupported envelope version {version!r}")
    for key, kind in (("id", str), ("task", str), ("queue", str)):
        if not isinstance(doc.get(key), kind):
            raise EnvelopeError(f"envelope field {key!r} missing or not a string")
    if not isinstance(doc.get("args", []), list) or not isinstance(doc.get("kwargs", {}), dict):
        raise EnvelopeError("envelope args must be a list and kwargs an object")
    priority = doc.get("priority", 0)
    if not isinstance(priority, int) or isinstance(priority, bool) or not 0 <= priority <= 9:
        raise EnvelopeError(f"envelope priority {priority!r} is not an integer 0-9")


def decode_envelope(data: bytes) -> Envelope:
    """Decode wire bytes; raises :class:`EnvelopeError` for anything malformed."""
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise EnvelopeError(f"envelope is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise EnvelopeError("envelope is not a JSON object")
    _check(doc)
    try:
        return Envelope(
            id=doc["id"],
            task=doc["task"],
            queue=doc["queue"],
            args=doc.get("args", []),
            kwargs=doc.get("kwargs", {}),
            priority=doc.get("priority", 0),
            created_at=float(doc.get("created_at", 0.0)),
            eta=_opt_float(doc.get("eta")),
            expires=_opt_float(doc.get("expires")),
            attempt=int(doc.get("attempt", 1)),
            max_retries=int(doc.get("max_retries", 0)),
            timeout=_opt_float(doc.get("timeout")),
            idempotency_key=doc.get("idempotency_key"),
            correlation_id=doc.get("correlation_id"),
            parent_id=doc.get("parent_id"),
            root_id=doc.get("root_id"),
            headers=dict(doc.get("headers") or {}),
            canvas=doc.get("canvas"),
            content_type=doc.get("content_type", "application/json"),
            v=doc["v"],
        )
    except (TypeError, ValueError) as exc:
        raise EnvelopeError(f"malformed envelope: {exc}") from None


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)
