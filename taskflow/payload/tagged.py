"""The un-annotated encoding: :func:`encode_any`/:func:`decode_any` and the ``__tf__`` tags."""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable, Iterable, Mapping
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID

from taskflow.errors import PayloadError

from .core import (
    _DATA_KEY,
    _JSON_SCALARS,
    _JSON_TYPES,
    _TAG,
    _b64,
    _class_name,
    _Codec,
    _dec_in,
    _describe,
    _enc_in,
    _finite,
    _Mismatch,
    _optional_attr,
    _ordered,
    _segment,
    _unb64,
)
from .protobuf import _decode_any_protobuf, _protobuf_wire


def _tagged(tag: str, payload: Any) -> dict[str, Any]:
    return {_TAG: tag, "v": payload}


def _any_items(values: Iterable[Any]) -> list[Any]:
    return [_enc_in(_ANY, item, index) for index, item in enumerate(values)]


def _any_dict(value: Mapping[Any, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, item in value.items():
        if not isinstance(key, str):
            error = _Mismatch(
                f"dict keys must be str, got {_describe(key)} "
                "(annotate the parameter, e.g. dict[int, ...], for other key types)"
            )
            error.path.append(_segment(_DATA_KEY, False))
            raise error
        out[str.__str__(key)] = _enc_in(_ANY, item, _DATA_KEY)
    # A user dict carrying the tag key would be read back as a tagged value; wrap it.
    return _tagged("dict", out) if _TAG in out else out


_ANY_ENCODERS: dict[type, Callable[[Any], Any]] = {
    # str and int entries only serve subclasses; exact str/int short-circuit earlier.
    str: str.__str__,
    int: int,
    float: lambda v: _finite(float(v)),
    list: _any_items,
    dict: _any_dict,
    tuple: lambda v: _tagged("tuple", _any_items(v)),
    set: lambda v: _tagged("set", _any_items(_ordered(v))),
    frozenset: lambda v: _tagged("frozenset", _any_items(_ordered(v))),
    datetime: lambda v: _tagged("datetime", v.isoformat()),
    date: lambda v: _tagged("date", v.isoformat()),
    time: lambda v: _tagged("time", v.isoformat()),
    timedelta: lambda v: _tagged("timedelta", v.total_seconds()),
    UUID: lambda v: _tagged("uuid", str(v)),
    Decimal: lambda v: _tagged("decimal", str(v)),
    bytes: lambda v: _tagged("bytes", _b64(v)),
    bytearray: lambda v: _tagged("bytes", _b64(v)),
}
# Subclass lookup order: datetime must come before date, which it subclasses.
_ANY_BASES: tuple[type, ...] = (
    str,
    int,
    float,
    datetime,
    date,
    time,
    timedelta,
    UUID,
    Decimal,
    bytes,
    bytearray,
    list,
    tuple,
    dict,
    set,
    frozenset,
)


def _encode_any(value: Any) -> Any:
    kind = type(value)
    if kind in _JSON_SCALARS:
        return value
    handler = _ANY_ENCODERS.get(kind)
    if handler is not None:
        return handler(value)
    return _encode_any_other(value)


def _encode_any_other(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return _encode_any(value.value)
    for base in _ANY_BASES:
        if isinstance(value, base):
            return _ANY_ENCODERS[base](value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            f.name: _enc_in(_ANY, getattr(value, f.name), f.name, True)
            for f in dataclasses.fields(value)
        }
    model_base = _optional_attr("pydantic.main", "BaseModel")
    if model_base is not None and isinstance(value, model_base):
        return _encode_any(value.model_dump(mode="json"))
    message_base = _optional_attr("google.protobuf.message", "Message")
    if message_base is not None and isinstance(value, message_base):
        return _protobuf_wire(value)
    raise _Mismatch(f"{_class_name(type(value))} object is not JSON-serializable")


def _decode_any(value: Any) -> Any:
    kind = type(value)
    if kind is list:
        return [_dec_in(_ANY, item, index) for index, item in enumerate(value)]
    if kind is dict:
        return _decode_any_dict(value)
    return value


def _decode_plain_dict(value: dict[str, Any]) -> dict[str, Any]:
    return {key: _dec_in(_ANY, item, _DATA_KEY) for key, item in value.items()}


_TAG_DECODERS: dict[str, tuple[tuple[type, ...], Callable[[Any], Any]]] = {
    "datetime": ((str,), datetime.fromisoformat),
    "date": ((str,), date.fromisoformat),
    "time": ((str,), time.fromisoformat),
    "timedelta": ((int, float), lambda v: timedelta(seconds=v)),
    "uuid": ((str,), UUID),
    "decimal": ((str,), Decimal),
    "bytes": ((str,), _unb64),
    "tuple": ((list,), lambda v: tuple(_decode_any(v))),
    "set": ((list,), lambda v: set(_decode_any(v))),
    "frozenset": ((list,), lambda v: frozenset(_decode_any(v))),
    "dict": ((dict,), _decode_plain_dict),
}


def _decode_any_dict(value: dict[str, Any]) -> Any:
    tag = value.get(_TAG)
    if tag is None:
        return _decode_plain_dict(value)
    if tag == "protobuf":
        return _decode_any_protobuf(value)
    spec = _TAG_DECODERS.get(tag) if type(tag) is str else None
    if spec is None:
        known = ", ".join(sorted([*_TAG_DECODERS, "protobuf"]))
        raise _Mismatch(f"unknown {_TAG} tag (got {_describe(tag)}); known tags: {known}")
    kinds, convert = spec
    payload = value.get("v")
    if len(value) != 2 or not isinstance(payload, kinds) or isinstance(payload, bool):
        raise _Mismatch(f"malformed {tag} value: expected {_kinds_text(kinds)} under 'v'")
    try:
        return convert(payload)
    except (ValueError, ArithmeticError, TypeError):
        # TypeError: a set element that decoded to an unhashable value. The library's
        # message quotes the value, so it is not passed on.
        raise _Mismatch(f"malformed {tag} value: not a valid {tag}") from None


def _kinds_text(kinds: tuple[type, ...]) -> str:
    names = {int: "number", float: "number", str: "string", list: "array", dict: "object"}
    return " or ".join(dict.fromkeys(names.get(k, k.__name__) for k in kinds))


def encode_any(value: Any) -> Any:
    """Encode ``value`` as an un-annotated parameter would be (see the module docstring).

    Raises :class:`PayloadError` for values that are not JSON-serializable.
    """
    try:
        return _encode_any(value)
    except _Mismatch as exc:
        raise PayloadError(f"value{exc.where()}: {exc.message}") from None
    except RecursionError:
        raise PayloadError(TOO_DEEP) from None


def decode_any(value: Any) -> Any:
    """Reverse :func:`encode_any`: turn tagged wire values back into Python objects."""
    try:
        return _decode_any(value)
    except _Mismatch as exc:
        raise PayloadError(f"value{exc.where()}: {exc.message}") from None
    except RecursionError:
        raise PayloadError(TOO_DEEP) from None


TOO_DEEP = "value: nested too deeply"


class _AnyCodec(_Codec):
    """No annotation, ``Any`` or ``object``: the un-annotated encoding."""

    name = "Any"
    enc_fast = _JSON_SCALARS
    dec_fast = _JSON_SCALARS | {float}
    exact = (object,)
    wire = _JSON_TYPES

    def encode(self, value: Any) -> Any:
        return _encode_any(value)

    def decode(self, value: Any) -> Any:
        return _decode_any(value)


_ANY = _AnyCodec()
