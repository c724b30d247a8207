"""Protobuf messages: the tagged binary wire form, strict parsing and the annotated codec.

Protobuf is never imported here at import time: a message class can only exist once the
user's code has imported it, and the helpers import its submodules on demand.
"""

from __future__ import annotations

import importlib
import re
from typing import Any

from .core import (
    _TAG,
    _b64,
    _class_name,
    _Codec,
    _expected,
    _Mismatch,
    _optional_attr,
    _unb64,
    _Unsupported,
)


def _protobuf_wire(message: Any) -> dict[str, Any]:
    # deterministic=True keeps map fields in a stable order, so equal messages encode equally.
    data = message.SerializeToString(deterministic=True)
    return {_TAG: "protobuf", "type": message.DESCRIPTOR.full_name, "v": _b64(data)}


def _protobuf_class(full_name: str) -> Any:
    try:
        pool = importlib.import_module("google.protobuf.descriptor_pool")
        factory = importlib.import_module("google.protobuf.message_factory")
    except ImportError:
        raise _Mismatch(f"protobuf is not installed (value of type {full_name})") from None
    try:
        descriptor = pool.Default().FindMessageTypeByName(full_name)
    except (KeyError, TypeError, ValueError):
        # The generated *_pb2 module registers the type when imported; it was not.
        raise _Mismatch(f"unknown protobuf message type {_type_name(full_name)}") from None
    return factory.GetMessageClass(descriptor)


def _protobuf_parts(value: Any) -> tuple[str, bytes]:
    if type(value) is not dict or value.get(_TAG) != "protobuf":
        raise _expected("protobuf message", value)
    type_name, payload = value.get("type"), value.get("v")
    if type(type_name) is not str or type(payload) is not str or len(value) != 3:
        raise _Mismatch("malformed protobuf value: expected keys __tf__, type and v (strings)")
    try:
        return type_name, _unb64(payload)
    except ValueError:  # binascii.Error, or non-ASCII text
        raise _Mismatch(f"malformed {_type_name(type_name)} value: bad base64") from None


def _parse_protobuf(cls: Any, type_name: str, data: bytes) -> Any:
    """Parse ``data`` as ``cls``, strictly: bytes with fields ``cls`` does not know fail.

    Protobuf parsing is lenient by design (unknown fields are kept, a field of the wrong
    wire type becomes an unknown field), so the bytes of another message type often parse
    "successfully". Comparing the size with and without unknown fields (a recursive
    discard) catches that, so a payload of the wrong type is rejected, not passed on.
    """
    try:
        message = cls.FromString(data)
    except Exception:  # the library's DecodeError, but keep any parse failure typed
        raise _Mismatch(f"could not parse {type_name}: the bytes are not valid protobuf") from None
    size = message.ByteSize()
    message.DiscardUnknownFields()
    if message.ByteSize() != size:
        raise _Mismatch(f"bytes are not a {type_name}: they carry fields it does not define")
    return message


def _protobuf_from_json(cls: Any, type_name: str, value: dict[str, Any]) -> Any:
    """A protobuf message from its canonical proto3 JSON mapping (unknown names fail)."""
    json_format = importlib.import_module("google.protobuf.json_format")
    try:
        return json_format.ParseDict(value, cls())
    except Exception as exc:  # json_format.ParseError and the errors it wraps
        raise _Mismatch(f"invalid proto3 JSON for {type_name}{_json_problem(exc)}") from None


def _json_problem(exc: Exception) -> str:
    # The library's message quotes the offending value or key: keep only the fields it
    # names on the way down, which belong to the schema.
    text = str(exc)
    path = ".".join(_PARSE_FIELD.findall(text))
    where = f" at field {path}" if path else ""
    if "has no field named" in text:
        return f"{where}: an unknown field"
    return where


_PARSE_FIELD = re.compile(r"Failed to parse ([A-Za-z_][A-Za-z0-9_]*) field")
_FULL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


def _type_name(name: str) -> str:
    # A type name arrives with the data: show it only when it is one.
    return name if len(name) <= 200 and _FULL_NAME.fullmatch(name) else "(malformed type name)"


def _decode_any_protobuf(value: dict[str, Any]) -> Any:
    type_name, data = _protobuf_parts(value)
    return _parse_protobuf(_protobuf_class(type_name), type_name, data)


def _is_protobuf_message(cls: type) -> bool:
    base = _optional_attr("google.protobuf.message", "Message")
    return base is not None and issubclass(cls, base)


class _ProtobufCodec(_Codec):
    wire = frozenset({dict})

    def __init__(self, cls: type, args: tuple[Any, ...]) -> None:
        descriptor = getattr(cls, "DESCRIPTOR", None)
        if descriptor is None:
            raise _Unsupported(_class_name(cls), "annotate with a concrete protobuf message")
        self.cls: Any = cls
        self.full_name: str = descriptor.full_name
        self.name = self.full_name
        self.exact = (cls,)

    def encode(self, value: Any) -> Any:
        if type(value) is dict:
            value = _protobuf_from_json(self.cls, self.full_name, value)
        elif not isinstance(value, self.cls):
            raise _expected(self.name, value)
        return _protobuf_wire(value)

    def decode(self, value: Any) -> Any:
        if type(value) is dict and _TAG not in value:
            # A producer without protobuf (JavaScript, curl) may send the JSON mapping.
            return _protobuf_from_json(self.cls, self.full_name, value)
        type_name, data = _protobuf_parts(value)
        if type_name != self.full_name:
            raise _Mismatch(f"expected {self.full_name}, got {_type_name(type_name)}")
        return _parse_protobuf(self.cls, type_name, data)
