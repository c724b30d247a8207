"""Envelope codec: :class:`~taskflow.message.Envelope` <-> bytes (JSON, see docs/protocol.md).

The payload inside is already JSON-safe (see :mod:`taskflow.payload`), so one JSON pass
encodes the whole message. With ``content_type`` :data:`MSGPACK` the arguments travel
instead as one base64 field ``payload`` holding ``msgpack([args, kwargs])``; the envelope
itself stays JSON, so brokers (and tools that peek at messages) never need msgpack.
"""

from __future__ import annotations

import base64
import binascii
import importlib
from typing import Any

import orjson

from .errors import PayloadError
from .message import PROTOCOL_VERSION, Envelope

__all__ = [
    "JSON",
    "MSGPACK",
    "EnvelopeError",
    "decode_envelope",
    "dumps",
    "encode_envelope",
    "loads",
]

JSON = "application/json"
"""Content type of the default payload: ``args``/``kwargs`` inline in the JSON envelope."""
MSGPACK = "application/x-msgpack"
"""Content type of a msgpack payload: base64 ``payload`` = ``msgpack([args, kwargs])``."""
_MSGPACK_HINT = "msgpack payloads need msgpack: pip install 'taskflow-queue[msgpack]'"


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
        "created_at": env.created_at,
    }
    if env.content_type == MSGPACK:
        doc["payload"] = _pack(env)
    else:
        doc["args"] = env.args
        doc["kwargs"] = env.kwargs
    # Fields at their default value are left out (the decoder restores them).
    if env.priority:
        doc["priority"] = env.priority
    if env.attempt != 1:
        doc["attempt"] = env.attempt
    if env.max_retries:
        doc["max_retries"] = env.max_retries
    if env.headers:
        doc["headers"] = env.headers
    if env.content_type != JSON:
        doc["content_type"] = env.content_type
    for name in _OPTIONAL:
        value = getattr(env, name)
        if value is not None:
            doc[name] = value
    try:
        return orjson.dumps(doc)
    except TypeError as exc:
        raise PayloadError(f"{env.task}: envelope is not JSON-serializable: {exc}") from None


def _msgpack() -> Any:
    try:
        return importlib.import_module("msgpack")
    except ImportError:
        raise PayloadError(_MSGPACK_HINT) from None


def _pack(env: Envelope) -> str:
    try:
        data = _msgpack().packb([env.args, env.kwargs], use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as exc:
        raise PayloadError(f"{env.task}: payload is not msgpack-serializable: {exc}") from None
    return base64.b64encode(data).decode("ascii")


def _unpack(doc: dict[str, Any]) -> None:
    """Replace a msgpack ``payload`` field by the ``args``/``kwargs`` it carries."""
    if doc.get("content_type") != MSGPACK or "args" in doc or "kwargs" in doc:
        raise EnvelopeError(
            f"envelope field 'payload' needs content_type {MSGPACK!r} and no 'args'/'kwargs'"
        )
    try:
        data = base64.b64decode(doc.pop("payload"), validate=True)
    except (binascii.Error, TypeError, ValueError) as exc:
        raise EnvelopeError(f"envelope payload is not base64: {exc}") from None
    try:
        module = _msgpack()
    except PayloadError as exc:  # msgpack is not installed on this side
        raise EnvelopeError(str(exc)) from None
    try:
        unpacked = module.unpackb(data, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types for corrupt input
        raise EnvelopeError(f"envelope payload is not valid msgpack: {exc}") from None
    if not isinstance(unpacked, list) or len(unpacked) != 2:
        raise EnvelopeError("msgpack payload must be the array [args, kwargs]")
    doc["args"], doc["kwargs"] = unpacked


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
    if "payload" in doc:
        _unpack(doc)
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
            content_type=doc.get("content_type", JSON),
            v=doc["v"],
        )
    except (TypeError, ValueError) as exc:
        raise EnvelopeError(f"malformed envelope: {exc}") from None


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)
