"""Envelope codec: :class:`~taskflow.message.Envelope` <-> bytes (JSON, see docs/protocol.md).

The payload inside is already JSON-safe (see :mod:`taskflow.payload`), so one JSON pass
encodes the whole message. With ``content_type`` :data:`MSGPACK` the arguments travel
instead as one base64 field ``payload`` holding ``msgpack([args, kwargs])``; the envelope
itself stays JSON, so brokers (and tools that peek at messages) never need msgpack.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import importlib
import math
from typing import Any

import orjson

from .errors import PayloadError
from .message import PROTOCOL_VERSION, Envelope, envelope_of

__all__ = [
    "JSON",
    "MAX_DEPTH",
    "MSGPACK",
    "EnvelopeError",
    "decode_envelope",
    "dumps",
    "encode_envelope",
    "loads",
    "too_deep",
]

JSON = "application/json"
"""Content type of the default payload: ``args``/``kwargs`` inline in the JSON envelope."""
MSGPACK = "application/x-msgpack"
"""Content type of a msgpack payload: base64 ``payload`` = ``msgpack([args, kwargs])``."""
_MSGPACK_HINT = "msgpack payloads need msgpack: pip install 'taskflow-queue[msgpack]'"


class EnvelopeError(PayloadError):
    """Bytes that are not a valid taskflow envelope."""


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
    _optional(env, doc)
    try:
        return orjson.dumps(doc)
    except TypeError as exc:
        raise PayloadError(_unencodable(env, exc)) from None


def _unencodable(env: Envelope, exc: TypeError) -> str:
    """What to say of an envelope JSON cannot carry: the argument that holds it (looked
    for only now, on the error path), never its value."""
    hint = " (send a larger integer as a str)" if "64-bit" in str(exc) else ""
    named = [(f"argument {i + 1}", v) for i, v in enumerate(env.args)]
    for where, value in [*named, *env.kwargs.items()]:
        try:
            orjson.dumps(value)
        except TypeError:
            return f"{env.task}({where}): not JSON-serializable: {exc}{hint}"
    return f"{env.task}: envelope is not JSON-serializable: {exc}{hint}"


def _optional(env: Envelope, doc: dict[str, Any]) -> None:
    """The optional fields that are not None (spelled out: one envelope is encoded per
    send and per retry)."""
    if env.eta is not None:
        doc["eta"] = env.eta
    if env.expires is not None:
        doc["expires"] = env.expires
    if env.timeout is not None:
        doc["timeout"] = env.timeout
    if env.idempotency_key is not None:
        doc["idempotency_key"] = env.idempotency_key
    if env.correlation_id is not None:
        doc["correlation_id"] = env.correlation_id
    if env.parent_id is not None:
        doc["parent_id"] = env.parent_id
    if env.root_id is not None:
        doc["root_id"] = env.root_id
    if env.canvas is not None:
        doc["canvas"] = env.canvas


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
    payload = doc.pop("payload")
    if not isinstance(payload, str):
        raise EnvelopeError("envelope field 'payload' must be a base64 string")
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):  # ValueError: non-ASCII text
        raise EnvelopeError("envelope field 'payload' is not base64") from None
    try:
        module = _msgpack()
    except PayloadError as exc:  # msgpack is not installed on this side
        raise EnvelopeError(str(exc)) from None
    try:
        unpacked = module.unpackb(data, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types for corrupt input
        raise EnvelopeError(
            f"envelope payload is not valid msgpack ({type(exc).__name__})"
        ) from None
    if not isinstance(unpacked, list) or len(unpacked) != 2:
        raise EnvelopeError("msgpack payload must be the array [args, kwargs]")
    doc["args"], doc["kwargs"] = unpacked
    # msgpack carries more than JSON (bytes, extension types, non-string keys, NaN): the
    # payload must hold exactly JSON wire values, or a retry could not re-encode it.
    problem = _not_json(unpacked)
    if problem:
        raise EnvelopeError(f"msgpack payload holds {problem}; only JSON values are allowed")


MAX_DEPTH = 64
"""How deeply one argument value may nest arrays and objects (``[1]`` has depth 1)."""

_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1  # what orjson reads and writes
_I64_MAX = 2**63 - 1


def too_deep(value: Any) -> bool:
    """Whether ``value`` nests lists/dicts more than :data:`MAX_DEPTH` levels deep."""
    if type(value) is not list and type(value) is not dict:
        return False
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_DEPTH:
            return True
        children = item.values() if type(item) is dict else item
        stack.extend((c, depth + 1) for c in children if type(c) is list or type(c) is dict)
    return False


def _not_json(value: Any) -> str | None:
    """What in ``value`` is not a JSON wire value (type names only), or None."""
    stack = [value]
    while stack:
        item = stack.pop()
        kind = type(item)
        if kind is list:
            stack.extend(item)
        elif kind is dict:
            if not all(type(k) is str for k in item):
                return "an object key that is not a string"
            stack.extend(item.values())
        elif kind is float:
            if not math.isfinite(item):
                return "a NaN or infinite number"
        elif kind is int:
            if not _INT_MIN <= item <= _INT_MAX:
                return "an integer outside the 64-bit range"
        elif kind not in (str, bool, type(None)):
            return f"a {kind.__name__} value"
    return None


def _number(doc: dict[str, Any], key: str, default: float | None) -> float | None:
    """A JSON number (not a boolean, finite), or ``default`` when absent; null is kept."""
    if key not in doc:
        return default
    value = doc[key]
    if value is None and default is None:
        return None
    if type(value) not in (int, float) or not math.isfinite(value):
        kind = "a number or null" if default is None else "a number"
        raise EnvelopeError(f"envelope field {key!r} must be {kind} (got {_kind(value)})")
    return float(value)


def _integer(doc: dict[str, Any], key: str, default: int, low: int, high: int) -> int:
    """A JSON integer (not a boolean) within ``low..high``, or ``default`` when absent."""
    value = doc.get(key, default)
    if type(value) is not int or not low <= value <= high:
        raise EnvelopeError(
            f"envelope field {key!r} must be an integer {low}..{high} (got {_kind(value)})"
        )
    return value


def _text(doc: dict[str, Any], key: str, *, required: bool = False) -> Any:
    value = doc.get(key)
    if required:
        if type(value) is not str or not value:
            raise EnvelopeError(f"envelope field {key!r} must be a non-empty string")
    elif value is not None and type(value) is not str:
        raise EnvelopeError(f"envelope field {key!r} must be a string or null")
    return value


def _kind(value: Any) -> str:
    # Envelope errors end up in logs and dead letters: they name a type, never a value,
    # except for the few numbers whose value is the point (out of range, NaN).
    if type(value) in (int, float):
        return "NaN or infinity" if not math.isfinite(value) else str(value)
    return "null" if value is None else type(value).__name__


_OPTIONAL_TEXT = ("idempotency_key", "correlation_id", "parent_id", "root_id")


def _check_names(doc: dict[str, Any]) -> None:
    tid, task, queue = doc.get("id"), doc.get("task"), doc.get("queue")
    # One test for the usual envelope (three plain strings), unrolled: it runs per message.
    if (
        type(tid) is str
        and type(task) is str
        and type(queue) is str
        and tid.isprintable()
        and task.isprintable()
        and queue.isprintable()
        and tid
        and task
        and queue
        and " " not in queue
    ):
        return
    for key in ("id", "task", "queue"):
        value = doc.get(key)
        if type(value) is not str or not value:
            raise EnvelopeError(f"envelope field {key!r} must be a non-empty string")
        # Names and ids go into log lines and broker headers: a control character in one
        # forges a log line (a newline) or cannot be carried at all (a NATS header).
        if not value.isprintable():
            raise EnvelopeError(f"envelope field {key!r} must be printable text")
    # Every whitespace character but the space is unprintable: only the space is left.
    raise EnvelopeError("envelope field 'queue' must not contain whitespace")


def _check(doc: dict[str, Any]) -> None:
    version = doc.get("v")
    if type(version) is not int or version != PROTOCOL_VERSION:
        raise EnvelopeError(
            f"unsupported envelope version ({_kind(version)}); this worker speaks 1"
        )
    _check_names(doc)
    args, kwargs = doc.get("args", []), doc.get("kwargs", {})
    if type(args) is not list or type(kwargs) is not dict:
        raise EnvelopeError("envelope args must be an array and kwargs an object")
    for key in _OPTIONAL_TEXT:
        if key in doc:
            _text(doc, key)
    if "headers" in doc:
        headers = doc["headers"]
        if type(headers) is not dict or not all(type(v) is str for v in headers.values()):
            raise EnvelopeError("envelope field 'headers' must be an object of strings")
    if doc.get("canvas") is not None and type(doc["canvas"]) is not dict:
        raise EnvelopeError("envelope field 'canvas' must be an object or null")
    if type(doc.get("content_type", JSON)) is not str:
        raise EnvelopeError("envelope field 'content_type' must be a string")


def _check_depth(doc: dict[str, Any]) -> None:
    args, kwargs = doc.get("args", []), doc.get("kwargs", {})
    if any(too_deep(a) for a in args) or any(too_deep(v) for v in kwargs.values()):
        raise EnvelopeError(f"an argument nests deeper than {MAX_DEPTH} levels")


def decode_envelope(data: bytes) -> Envelope:
    """Decode wire bytes; raises :class:`EnvelopeError` for anything malformed.

    Every field is checked as docs/protocol.md section 2 says, so a decoded envelope can
    always be encoded again (for a retry) and never surprises the worker.
    """
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise EnvelopeError(f"envelope is not valid JSON: {exc}") from None
    except TypeError:
        raise EnvelopeError("envelope is not bytes") from None
    if not isinstance(doc, dict):
        raise EnvelopeError("envelope is not a JSON object")
    packed = "payload" in doc
    if packed:
        _unpack(doc)
    _check(doc)
    # Nesting deeper than MAX_DEPTH needs that many brackets: most bodies skip the walk.
    if packed or not isinstance(data, bytes) or data.count(b"[") + data.count(b"{") > MAX_DEPTH:
        _check_depth(doc)
    # A field that is absent takes its default (which is valid): only those present are
    # checked (one envelope is decoded per delivery). The document's known fields (as a
    # rule all of them; an unknown one is ignored) become the envelope's, after the
    # defaults, with the numbers checked and converted.
    if not doc.keys() <= _FIELDS:
        doc = {key: value for key, value in doc.items() if key in _FIELDS}
    fields = {**_DEFAULTS, **doc}
    if "args" not in doc:
        fields["args"] = []
    if "kwargs" not in doc:
        fields["kwargs"] = {}
    fields["headers"] = dict(doc["headers"]) if "headers" in doc else {}
    fields["created_at"] = _number(doc, "created_at", 0.0) or 0.0
    if not _CHECKED.isdisjoint(doc):
        _numbers(doc, fields)
    return envelope_of(fields)


_FIELDS = frozenset(field.name for field in dataclasses.fields(Envelope))
# Every field in its order, with its default; None where there is none to share: the
# required fields (always present) and args, kwargs and headers (made for each envelope).
_DEFAULTS = {
    field.name: None if field.default is dataclasses.MISSING else field.default
    for field in dataclasses.fields(Envelope)
}
_CHECKED = frozenset({"priority", "eta", "expires", "attempt", "max_retries", "timeout"})


def _numbers(doc: dict[str, Any], fields: dict[str, Any]) -> None:
    """Check the numbers of ``doc`` beside ``created_at`` into ``fields``."""
    if "priority" in doc:
        fields["priority"] = _integer(doc, "priority", 0, 0, 9)
    if "eta" in doc:
        fields["eta"] = _number(doc, "eta", None)
    if "expires" in doc:
        fields["expires"] = _number(doc, "expires", None)
    if "attempt" in doc:
        fields["attempt"] = _integer(doc, "attempt", 1, 1, _I64_MAX - 1)
    if "max_retries" in doc:
        fields["max_retries"] = _integer(doc, "max_retries", 0, 0, _I64_MAX)
    if "timeout" in doc:
        fields["timeout"] = _positive(_number(doc, "timeout", None))


def _positive(timeout: float | None) -> float | None:
    if timeout is not None and timeout <= 0:
        raise EnvelopeError(f"envelope field 'timeout' must be positive or null (got {timeout})")
    return timeout
