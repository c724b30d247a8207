"""Payload schemas: task annotations validate and convert arguments and results.

A task's parameter annotations are its payload schema. :func:`build_schema` reads the
signature once, at decoration time, and compiles a tree of small codec objects. At enqueue
:meth:`PayloadSchema.encode_args` checks that the call binds to the signature and turns every
argument into a JSON-safe value; in the worker :meth:`PayloadSchema.decode_args` turns those
values back into the annotated types. Results use the return annotation the same way. No
``typing.get_type_hints`` or ``inspect.signature`` runs per call. For parameters annotated
``int``, ``str``, ``bool`` or ``None``, or not annotated at all, a value of the matching exact
type passes through after a single set lookup (``float`` takes one extra finiteness check).

Supported annotations and their wire form:

* no annotation, ``Any``, ``object``: JSON-native values (``None``, ``bool``, ``int``,
  finite ``float``, ``str``, ``list``, ``dict`` with ``str`` keys) pass through; ``datetime``,
  ``date``, ``time``, ``timedelta``, ``UUID``, ``Decimal``, ``bytes``, ``tuple``, ``set`` and
  ``frozenset`` become ``{"__tf__": tag, "v": ...}`` so they round-trip without annotations.
  Un-annotated dataclass instances and pydantic models are sent as plain dicts and enum
  members as their value, so they *decode as dict / raw value*. A user dict that contains a
  ``"__tf__"`` key is wrapped so it is not mistaken for a tagged value. Anything else is
  rejected as not JSON-serializable; nothing is ever pickled.
* ``int`` (``bool`` is rejected), ``float`` (``int`` accepted and converted; NaN and infinity
  are rejected because JSON cannot carry them), ``str``, ``bool``, ``None``, ``bytes``
  (base64 string).
* ``datetime``/``date``/``time`` (ISO 8601 strings; the UTC offset is kept, naive stays
  naive, a zone name becomes a fixed offset), ``timedelta`` (float seconds), ``UUID`` and
  ``Decimal`` (strings), ``Enum``/``IntEnum``/``StrEnum``/``Flag`` subclasses (by value).
* ``Optional[X]``/``X | None``, ``Union[...]``, ``Literal[...]``, ``Annotated[X, ...]`` (as
  ``X``), ``NewType`` (as its supertype), ``TypeVar`` (as its bound, constraints or ``Any``).
* ``list[X]``, ``tuple[X, ...]``, ``tuple[X, Y]``, ``set[X]``, ``frozenset[X]``,
  ``Sequence[X]``, ``MutableSequence[X]``, ``AbstractSet[X]``, ``MutableSet[X]`` (JSON lists;
  sets are sorted when their elements allow it so the wire form is deterministic; abstract
  sequences decode as ``list``, ``str`` is not accepted as a ``Sequence``), ``dict[K, V]``,
  ``Mapping[K, V]``, ``MutableMapping[K, V]`` (JSON objects; ``K`` may be any type whose wire
  form is a string, e.g. ``str``, ``UUID``, ``date``, a str-valued ``Enum``, or an int-like
  type such as ``int``/``IntEnum``, sent as its decimal string), bare ``list``/``dict``/... as
  their ``Any``-parameterised forms.
* dataclasses (init fields, recursively; decoded by calling the class; unknown fields are
  rejected, missing fields with defaults are fine), ``TypedDict`` (``__required_keys__``
  honoured, unknown keys rejected), ``NamedTuple`` (a JSON list).
* pydantic v2 ``BaseModel`` subclasses (``model_dump(mode="json")``/``model_validate``; a dict
  is accepted at encode and validated) and protobuf messages
  (``{"__tf__": "protobuf", "type": full_name, "v": base64}``), detected only when those
  libraries are already imported by the code that defines the annotation. Protobuf bytes are
  parsed strictly (fields the annotated message does not define are an error, so the bytes of
  another message type are rejected); a protobuf parameter also accepts the message's proto3
  JSON mapping (a plain object) from producers without protobuf.

Typed decoding also accepts the un-annotated (tagged) form of the annotated type, e.g.
``{"__tf__": "datetime", "v": ...}`` for ``datetime`` or a tagged tuple for ``list[int]``: that
is what a producer sends when it only has the task name (``App.send_task`` in a process that
does not import the task). docs/protocol.md is the full wire specification.

Any other annotation (in particular an arbitrary class) raises :class:`PayloadError` from
:func:`build_schema`, naming the task and parameter.

Union rules: encoding tries the members in declaration order, first those the value is an
instance of (so ``float | int`` keeps ``3`` an ``int``), then all members; the first that
accepts the value wins. Decoding likewise prefers members whose wire form has the JSON type
of the value, then tries all; the first that decodes without error wins. Members that share a
wire form (``str | datetime``, two dataclasses with compatible fields) are therefore decided
by order: put the more specific member first.
"""

from __future__ import annotations

import base64
import binascii
import collections.abc as cabc
import contextlib
import dataclasses
import enum
import functools
import importlib
import inspect
import math
import operator
import reprlib
import sys
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID

from taskflow.errors import PayloadError

__all__ = ["PayloadSchema", "build_schema", "decode_any", "encode_any"]

_TAG = "__tf__"
_NONE_TYPE: type[None] = type(None)
# Exact types that are already JSON-safe and need no conversion (float needs a finiteness
# check when encoding, so it is only on the decode side).
_JSON_SCALARS: frozenset[type] = frozenset({str, int, bool, _NONE_TYPE})
_JSON_TYPES: frozenset[type] = frozenset({_NONE_TYPE, bool, int, float, str, list, dict})
_NOT_SEQUENCES = (str, bytes, bytearray, memoryview)
_MAX_REPR = 40

_REPR = reprlib.Repr()
_REPR.maxstring = _MAX_REPR
_REPR.maxother = _MAX_REPR
_REPR.maxlevel = 2
_REPR.maxlist = _REPR.maxtuple = _REPR.maxset = _REPR.maxfrozenset = _REPR.maxdict = 4


# --------------------------------------------------------------------------- errors


class _Mismatch(Exception):
    """A value does not fit; ``path`` collects location segments innermost first.

    Converters raise this cheap internal error and containers append their segment on the
    way out, so no path string is built unless something actually fails.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
        self.path: list[str] = []

    def where(self) -> str:
        return "".join(reversed(self.path))


class _Unsupported(Exception):
    """An annotation taskflow cannot encode (raised while building a schema)."""

    def __init__(self, what: str, reason: str) -> None:
        super().__init__(what, reason)
        self.what = what
        self.reason = reason


def _short_repr(value: Any) -> str:
    text = _REPR.repr(value)
    return text if len(text) <= _MAX_REPR else text[: _MAX_REPR - 3] + "..."


def _describe(value: Any) -> str:
    if value is None:
        return "None"
    return f"{type(value).__name__} {_short_repr(value)}"


def _expected(name: str, value: Any) -> _Mismatch:
    return _Mismatch(f"expected {name}, got {_describe(value)}")


def _segment(key: object, field: bool) -> str:
    if field:
        return f".{key}"
    if isinstance(key, int):
        return f"[{key}]"
    return f"[{key!r}]"


def _class_name(cls: type) -> str:
    # Qualified name without the "f.<locals>." noise of classes defined inside functions.
    return cls.__qualname__.rpartition("<locals>.")[2]


def _annotation_text(tp: Any) -> str:
    if isinstance(tp, type) and not isinstance(tp, types.GenericAlias):
        return _class_name(tp)
    return repr(tp).replace("typing.", "")


# --------------------------------------------------------------------------- codec base


class _Codec:
    """Converts one annotation's values to their wire form and back.

    ``enc_fast``/``dec_fast`` hold exact types that pass through unchanged, letting callers
    skip the method call. ``exact`` lists the runtime classes taken without coercion and
    ``wire`` the JSON types produced; unions use both to pick a member.
    """

    name: str = "Any"
    enc_fast: frozenset[type] = frozenset()
    dec_fast: frozenset[type] = frozenset()
    exact: tuple[type, ...] = ()
    wire: frozenset[type] = frozenset()

    def encode(self, value: Any) -> Any:
        raise NotImplementedError

    def decode(self, value: Any) -> Any:
        raise NotImplementedError

    def fill(self, builder: _Builder) -> None:
        """Build child codecs; split from ``__init__`` so recursive types can refer back."""


def _instance(value: Any, kinds: tuple[type, ...]) -> bool:
    # isinstance() without narrowing: the callers keep ``value`` typed as Any.
    return isinstance(value, kinds)


def _enc_in(codec: _Codec, value: Any, key: object, field: bool = False) -> Any:
    if type(value) in codec.enc_fast:
        return value
    try:
        return codec.encode(value)
    except _Mismatch as exc:
        exc.path.append(_segment(key, field))
        raise


def _dec_in(codec: _Codec, value: Any, key: object, field: bool = False) -> Any:
    if type(value) in codec.dec_fast:
        return value
    try:
        return codec.decode(value)
    except _Mismatch as exc:
        exc.path.append(_segment(key, field))
        raise


# --------------------------------------------------------------------------- un-annotated


def _tagged(tag: str, payload: Any) -> dict[str, Any]:
    return {_TAG: tag, "v": payload}


_SEQ_TAGS = frozenset({"tuple", "set", "frozenset"})
_TUPLE_TAGS = frozenset({"tuple"})
_DICT_TAGS = frozenset({"dict"})


def _untag(value: Any, tags: frozenset[str]) -> Any:
    """The payload of a tagged value whose tag is in ``tags``; any other value unchanged.

    A producer that does not know the annotation (``send_task`` from a process that does
    not import the task, another language following docs/protocol.md) sends the
    un-annotated, tagged form; typed codecs take it as well as their own plain form.
    """
    if type(value) is dict and len(value) == 2 and "v" in value:
        tag = value.get(_TAG)
        if type(tag) is str and tag in tags:
            return value["v"]
    return value


def _ordered(values: Iterable[Any]) -> list[Any]:
    # Sets have no order; sorting keeps the wire form deterministic (idempotency keys and
    # argument hashes compare it) whenever the elements are comparable.
    try:
        return sorted(values)
    except TypeError:
        return list(values)


def _finite(value: float) -> float:
    if math.isfinite(value):
        return value
    raise _Mismatch(f"expected finite float, got {_describe(value)} (JSON has no NaN/Infinity)")


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
            error.path.append(_segment(key, False))
            raise error
        out[str.__str__(key)] = _enc_in(_ANY, item, key)
    # A user dict carrying the tag key would be read back as a tagged value; wrap it.
    return _tagged("dict", out) if _TAG in out else out


def _b64(data: bytes | bytearray | memoryview) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text, validate=True)


def _protobuf_wire(message: Any) -> dict[str, Any]:
    # deterministic=True keeps map fields in a stable order, so equal messages encode equally.
    data = message.SerializeToString(deterministic=True)
    return {_TAG: "protobuf", "type": message.DESCRIPTOR.full_name, "v": _b64(data)}


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


def _optional_attr(module: str, name: str) -> Any:
    """``module.name`` if the optional library is already imported, else ``None``."""
    return getattr(sys.modules.get(module), name, None)


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
    return {key: _dec_in(_ANY, item, key) for key, item in value.items()}


def _protobuf_class(full_name: str) -> Any:
    try:
        pool = importlib.import_module("google.protobuf.descriptor_pool")
        factory = importlib.import_module("google.protobuf.message_factory")
    except ImportError:
        raise _Mismatch(f"protobuf is not installed (value of type {full_name})") from None
    try:
        descriptor = pool.Default().FindMessageTypeByName(full_name)
    except KeyError:
        # The generated *_pb2 module registers the type when imported; it was not.
        raise _Mismatch(f"unknown protobuf message type {full_name!r}") from None
    return factory.GetMessageClass(descriptor)


def _protobuf_parts(value: Any) -> tuple[str, bytes]:
    if type(value) is not dict or value.get(_TAG) != "protobuf":
        raise _expected("protobuf message", value)
    type_name, payload = value.get("type"), value.get("v")
    if type(type_name) is not str or type(payload) is not str:
        raise _Mismatch("malformed protobuf value")
    try:
        return type_name, _unb64(payload)
    except binascii.Error:
        raise _Mismatch(f"malformed protobuf value for {type_name}: bad base64") from None


def _parse_protobuf(cls: Any, type_name: str, data: bytes) -> Any:
    """Parse ``data`` as ``cls``, strictly: bytes with fields ``cls`` does not know fail.

    Protobuf parsing is lenient by design (unknown fields are kept, a field of the wrong
    wire type becomes an unknown field), so the bytes of another message type often parse
    "successfully". Comparing the size with and without unknown fields (a recursive
    discard) catches that, so a payload of the wrong type is rejected, not passed on.
    """
    try:
        message = cls.FromString(data)
    except Exception as exc:  # the library's DecodeError, but keep any parse failure typed
        raise _Mismatch(f"could not parse {type_name}: {exc}") from None
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
        raise _Mismatch(f"invalid JSON for {type_name}: {exc}") from None


def _decode_any_protobuf(value: dict[str, Any]) -> Any:
    type_name, data = _protobuf_parts(value)
    return _parse_protobuf(_protobuf_class(type_name), type_name, data)


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
        raise _Mismatch(f"unknown tagged value {_short_repr(tag)}")
    kinds, convert = spec
    payload = value.get("v")
    if len(value) != 2 or not isinstance(payload, kinds) or isinstance(payload, bool):
        raise _Mismatch(f"malformed {tag} value {_short_repr(value)}")
    try:
        return convert(payload)
    except (ValueError, ArithmeticError, TypeError) as exc:
        # TypeError: a set element that decoded to an unhashable value.
        raise _Mismatch(f"malformed {tag} value {_short_repr(payload)}: {exc}") from None


def encode_any(value: Any) -> Any:
    """Encode ``value`` as an un-annotated parameter would be (see the module docstring).

    Raises :class:`PayloadError` for values that are not JSON-serializable.
    """
    try:
        return _encode_any(value)
    except _Mismatch as exc:
        raise PayloadError(f"value{exc.where()}: {exc.message}") from None


def decode_any(value: Any) -> Any:
    """Reverse :func:`encode_any`: turn tagged wire values back into Python objects."""
    try:
        return _decode_any(value)
    except _Mismatch as exc:
        raise PayloadError(f"value{exc.where()}: {exc.message}") from None


# --------------------------------------------------------------------------- scalar codecs


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


class _IntCodec(_Codec):
    name = "int"
    enc_fast = dec_fast = frozenset({int})
    exact = (int,)
    wire = frozenset({int})

    def encode(self, value: Any) -> Any:
        # bool subclasses int, but True is not a meaningful int argument.
        if isinstance(value, int) and not isinstance(value, bool):
            return int(value)
        raise _expected("int", value)

    decode = encode


class _FloatCodec(_Codec):
    name = "float"
    dec_fast = frozenset({float})
    exact = (float,)
    wire = frozenset({float})

    def encode(self, value: Any) -> Any:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                return _finite(float(value))
            except OverflowError:
                raise _expected("float", value) from None
        raise _expected("float", value)

    decode = encode


class _StrCodec(_Codec):
    name = "str"
    enc_fast = dec_fast = frozenset({str})
    exact = (str,)
    wire = frozenset({str})

    def encode(self, value: Any) -> Any:
        if isinstance(value, str):
            # str.__str__ returns a plain str copy even for enum/str subclasses.
            return str.__str__(value)
        raise _expected("str", value)

    decode = encode


class _BoolCodec(_Codec):
    name = "bool"
    enc_fast = dec_fast = frozenset({bool})
    exact = (bool,)
    wire = frozenset({bool})

    def encode(self, value: Any) -> Any:
        if type(value) is bool:
            return value
        raise _expected("bool", value)

    decode = encode


class _NoneCodec(_Codec):
    name = "None"
    enc_fast = dec_fast = frozenset({_NONE_TYPE})
    exact = (_NONE_TYPE,)
    wire = frozenset({_NONE_TYPE})

    def encode(self, value: Any) -> Any:
        if value is None:
            return None
        raise _expected("None", value)

    decode = encode


class _TextCodec(_Codec):
    """A type carried as a string: ISO dates and times, UUID, Decimal, base64 bytes."""

    wire = frozenset({str})

    def __init__(
        self,
        name: str,
        accept: tuple[type, ...],
        to_text: Callable[[Any], str],
        from_text: Callable[[str], Any],
        reject: tuple[type, ...] = (),
    ) -> None:
        self.name = name
        # The un-annotated encoding tags these values with the lower-case type name.
        self.tags = frozenset({name.lower()})
        self.exact = accept
        self.reject = reject
        self.to_text = to_text
        self.from_text = from_text

    def encode(self, value: Any) -> Any:
        if isinstance(value, self.exact) and not isinstance(value, self.reject):
            return self.to_text(value)
        raise _expected(self.name, value)

    def decode(self, value: Any) -> Any:
        value = _untag(value, self.tags)
        if isinstance(value, str):
            try:
                return self.from_text(value)
            except (ValueError, ArithmeticError):
                pass  # reported below with the expected type
        raise _expected(self.name, value)


_TIMEDELTA_TAGS = frozenset({"timedelta"})


class _TimedeltaCodec(_Codec):
    name = "timedelta"
    exact = (timedelta,)
    wire = frozenset({float})

    def encode(self, value: Any) -> Any:
        if isinstance(value, timedelta):
            return value.total_seconds()
        raise _expected("timedelta", value)

    def decode(self, value: Any) -> Any:
        value = _untag(value, _TIMEDELTA_TAGS)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                return timedelta(seconds=value)
            except (OverflowError, ValueError):
                pass  # reported below with the expected type
        raise _expected("timedelta (seconds)", value)


_SIMPLE: dict[Any, _Codec] = {
    Any: _ANY,
    object: _ANY,
    typing.NoReturn: _ANY,
    typing.Never: _ANY,
    int: _IntCodec(),
    float: _FloatCodec(),
    str: _StrCodec(),
    typing.LiteralString: _StrCodec(),
    bool: _BoolCodec(),
    _NONE_TYPE: _NoneCodec(),
    bytes: _TextCodec("bytes", (bytes, bytearray), _b64, _unb64),
    datetime: _TextCodec("datetime", (datetime,), datetime.isoformat, datetime.fromisoformat),
    date: _TextCodec("date", (date,), date.isoformat, date.fromisoformat, reject=(datetime,)),
    time: _TextCodec("time", (time,), time.isoformat, time.fromisoformat),
    UUID: _TextCodec("UUID", (UUID,), str, UUID),
    Decimal: _TextCodec("Decimal", (Decimal,), str, Decimal),
    timedelta: _TimedeltaCodec(),
}


# --------------------------------------------------------------------------- choice codecs


class _EnumCodec(_Codec):
    """Enum members travel as their (encoded) value and decode by value."""

    def __init__(self, cls: type[enum.Enum], args: tuple[Any, ...]) -> None:
        self.cls = cls
        self.name = _class_name(cls)
        self.exact = (cls,)
        self.is_flag = issubclass(cls, enum.Flag)
        self.by_wire: dict[tuple[type, Any], enum.Enum] = {}
        self.unhashable: list[tuple[Any, enum.Enum]] = []
        for member in cls:
            try:
                wire = _encode_any(member.value)
            except _Mismatch as exc:
                raise _Unsupported(self.name, f"member {member.name}: {exc.message}") from None
            if isinstance(wire, (dict, list)):
                self.unhashable.append((wire, member))
            else:
                self.by_wire[type(wire), wire] = member
        self.wire = frozenset(kind for kind, _ in self.by_wire) | {
            type(w) for w, _ in self.unhashable
        }

    def encode(self, value: Any) -> Any:
        if isinstance(value, self.cls):
            return _encode_any(value.value)
        raise _expected(self.name, value)

    def decode(self, value: Any) -> Any:
        try:
            member = self.by_wire.get((type(value), value))
        except TypeError:  # an unhashable wire value: enum values that are tuples or sets
            member = next((m for w, m in self.unhashable if w == value), None)
        if member is None and self.is_flag and type(value) is int:
            member = self._combined_flag(value)
        if member is None:
            raise _expected(self.name, value)
        return member

    def _combined_flag(self, value: int) -> enum.Enum | None:
        # Flag combinations (A | B) are valid members that iteration does not list.
        try:
            return self.cls(value)
        except ValueError:
            return None


class _LiteralCodec(_Codec):
    def __init__(self, values: tuple[Any, ...]) -> None:
        self.name = "Literal[" + ", ".join(_short_repr(v) for v in values) + "]"
        pairs: list[tuple[Any, Any]] = []
        for literal in values:
            try:
                pairs.append((literal, _encode_any(literal)))
            except _Mismatch as exc:
                raise _Unsupported(self.name, exc.message) from None
        self.pairs = tuple(pairs)
        self.wire = frozenset(type(wire) for _, wire in pairs)

    def encode(self, value: Any) -> Any:
        # Compare types too: True == 1 but Literal[1] must not accept True.
        for literal, wire in self.pairs:
            if type(value) is type(literal) and value == literal:
                return wire
        raise _expected(self.name, value)

    def decode(self, value: Any) -> Any:
        for literal, wire in self.pairs:
            if type(value) is type(wire) and value == wire:
                return literal
        raise _expected(self.name, value)


class _OptionalCodec(_Codec):
    def __init__(self, inner: _Codec) -> None:
        self.inner = inner
        self.name = f"{inner.name} | None"
        self.enc_fast = inner.enc_fast | {_NONE_TYPE}
        self.dec_fast = inner.dec_fast | {_NONE_TYPE}
        self.exact = (*inner.exact, _NONE_TYPE)
        self.wire = inner.wire | {_NONE_TYPE}

    def encode(self, value: Any) -> Any:
        return None if value is None else self.inner.encode(value)

    def decode(self, value: Any) -> Any:
        return None if value is None else self.inner.decode(value)


class _UnionCodec(_Codec):
    """First fitting member wins; see "Union rules" in the module docstring."""

    def __init__(self, members: list[_Codec]) -> None:
        self.members = tuple(members)
        self.name = " | ".join(m.name for m in members)
        self.exact = tuple(t for m in members for t in m.exact)
        self.wire = frozenset(t for m in members for t in m.wire)
        self.enc_fast = frozenset(
            t for m in members for t in m.enc_fast if self._encoder_for(t) is m
        )
        self.dec_fast = frozenset(
            t for m in members for t in m.dec_fast if self._decoder_for(t) is m
        )

    def _encoder_for(self, kind: type) -> _Codec | None:
        return next((m for m in self.members if issubclass(kind, m.exact)), None)

    def _decoder_for(self, kind: type) -> _Codec | None:
        return next((m for m in self.members if kind in m.wire), None)

    def encode(self, value: Any) -> Any:
        preferred = [m for m in self.members if isinstance(value, m.exact)]
        return self._first(value, preferred, encode=True)

    def decode(self, value: Any) -> Any:
        kind = type(value)
        preferred = [m for m in self.members if kind in m.wire]
        return self._first(value, preferred, encode=False)

    def _first(self, value: Any, preferred: list[_Codec], *, encode: bool) -> Any:
        first_error: _Mismatch | None = None
        rest = [m for m in self.members if m not in preferred]
        for member in (*preferred, *rest):
            try:
                return member.encode(value) if encode else member.decode(value)
            except _Mismatch as exc:
                # A member the value clearly belongs to explains the failure best (it
                # carries the nested path); keep its error rather than a generic one.
                if first_error is None and member in preferred:
                    first_error = exc
        raise first_error or _expected(self.name, value)


# --------------------------------------------------------------------------- containers


class _SeqCodec(_Codec):
    """list / tuple[X, ...] / set / frozenset / Sequence and friends, as a JSON list."""

    wire = frozenset({list})

    def __init__(
        self,
        item: _Codec,
        name: str,
        accept: tuple[type, ...],
        build: Callable[[list[Any]], Any] | None,
        sort: bool,
    ) -> None:
        self.item = item
        self.name = name
        self.exact = accept
        self.build = build
        self.sort = sort

    def encode(self, value: Any) -> Any:
        if not _instance(value, self.exact) or isinstance(value, _NOT_SEQUENCES):
            raise _expected(self.name, value)
        item = self.item
        values = _ordered(value) if self.sort else value
        return [_enc_in(item, x, index) for index, x in enumerate(values)]

    def decode(self, value: Any) -> Any:
        value = _untag(value, _SEQ_TAGS)
        if not isinstance(value, list):
            raise _expected(self.name, value)
        item = self.item
        decoded = [_dec_in(item, x, index) for index, x in enumerate(value)]
        if self.build is None:
            return decoded
        try:
            return self.build(decoded)
        except TypeError as exc:  # unhashable elements for a set
            raise _Mismatch(f"cannot build {self.name}: {exc}") from None


class _FixedTupleCodec(_Codec):
    wire = frozenset({list})
    exact = (tuple,)

    def __init__(self, items: list[_Codec]) -> None:
        self.items = tuple(items)
        self.name = "tuple[" + (", ".join(c.name for c in items) or "()") + "]"

    def encode(self, value: Any) -> Any:
        if not isinstance(value, tuple) or len(value) != len(self.items):
            raise _expected(self.name, value)
        return [_enc_in(c, x, i) for i, (c, x) in enumerate(zip(self.items, value, strict=True))]

    def decode(self, value: Any) -> Any:
        value = _untag(value, _TUPLE_TAGS)
        if not isinstance(value, list) or len(value) != len(self.items):
            raise _expected(self.name, value)
        return tuple(
            _dec_in(c, x, i) for i, (c, x) in enumerate(zip(self.items, value, strict=True))
        )


class _KeyCodec:
    """Dict keys: JSON object keys are strings, so int-like keys travel as decimal text."""

    def __init__(self, codec: _Codec, numeric: bool) -> None:
        self.codec = codec
        self.numeric = numeric
        self.plain = codec.enc_fast == frozenset({str})

    def to_wire(self, key: Any) -> str:
        if self.plain and type(key) is str:
            return key
        try:
            wire = self.codec.encode(key)
        except _Mismatch as exc:
            raise self._key_error(exc, key) from None
        return str(wire) if self.numeric else str.__str__(wire)

    def from_wire(self, text: Any) -> Any:
        if self.plain and type(text) is str:
            return text
        try:
            if not isinstance(text, str):
                raise _expected("str key", text)
            return self.codec.decode(self._parse(text))
        except _Mismatch as exc:
            raise self._key_error(exc, text) from None

    def _parse(self, text: str) -> Any:
        if not self.numeric:
            return text
        try:
            return int(text)
        except ValueError:
            raise _expected(f"{self.codec.name} key", text) from None

    @staticmethod
    def _key_error(exc: _Mismatch, key: Any) -> _Mismatch:
        error = _Mismatch(f"bad dict key: {exc.message}")
        error.path.append(_segment(key, False))
        return error


class _DictCodec(_Codec):
    wire = frozenset({dict})

    def __init__(self, key: _KeyCodec, item: _Codec, name: str, accept: type) -> None:
        self.key = key
        self.item = item
        self.name = f"{name}[{key.codec.name}, {item.name}]"
        self.exact = (accept,)

    def encode(self, value: Any) -> Any:
        if not _instance(value, self.exact):
            raise _expected(self.name, value)
        to_wire, item = self.key.to_wire, self.item
        return {to_wire(k): _enc_in(item, v, k) for k, v in value.items()}

    def decode(self, value: Any) -> Any:
        value = _untag(value, _DICT_TAGS)
        if not isinstance(value, dict):
            raise _expected(self.name, value)
        from_wire, item = self.key.from_wire, self.item
        return {from_wire(k): _dec_in(item, v, k) for k, v in value.items()}


# --------------------------------------------------------------------------- structured types


def _check_keys(
    value: Mapping[str, Any], known: Mapping[str, Any], required: Iterable[str], what: str
) -> None:
    for key in value:
        if key not in known:
            raise _Mismatch(f"unknown field {_short_repr(key)} for {what}")
    for key in required:
        if key not in value:
            raise _Mismatch(f"missing required field {key!r} for {what}")


def _field_codec(builder: _Builder, owner: type, name: str, hint: Any) -> _Codec:
    try:
        return builder.build(hint)
    except _Unsupported as exc:
        raise _Unsupported(f"{exc.what} (field {_class_name(owner)}.{name})", exc.reason) from None


class _DataclassCodec(_Codec):
    """A dataclass as a dict of its init fields; decoded by calling the class."""

    wire = frozenset({dict})

    def __init__(self, cls: type, args: tuple[Any, ...]) -> None:
        self.cls = cls
        self.args = args
        self.name = _class_name(cls)
        self.exact = (cls,)
        self.fields: dict[str, _Codec] = {}
        self.required: tuple[str, ...] = ()

    def fill(self, builder: _Builder) -> None:
        hints = _class_hints(self.cls)
        mapping = _typevar_map(self.cls, self.args)
        required: list[str] = []
        # Only init fields: the constructor recomputes the rest when decoding.
        for f in dataclasses.fields(self.cls):
            if not f.init:
                continue
            hint = _substitute(hints.get(f.name, Any), mapping)
            self.fields[f.name] = _field_codec(builder, self.cls, f.name, hint)
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                required.append(f.name)
        self.required = tuple(required)

    def encode(self, value: Any) -> Any:
        if not isinstance(value, self.cls):
            raise _expected(self.name, value)
        return {
            name: _enc_in(codec, getattr(value, name), name, True)
            for name, codec in self.fields.items()
        }

    def decode(self, value: Any) -> Any:
        if not isinstance(value, dict):
            raise _expected(self.name, value)
        fields = self.fields
        _check_keys(value, fields, self.required, self.name)
        kwargs = {k: _dec_in(fields[k], v, k, True) for k, v in value.items()}
        try:
            return self.cls(**kwargs)
        except (TypeError, ValueError) as exc:  # e.g. raised by __post_init__ validation
            raise _Mismatch(f"could not build {self.name}: {exc}") from None


class _TypedDictCodec(_Codec):
    wire = frozenset({dict})
    exact = (dict,)

    def __init__(self, cls: type, args: tuple[Any, ...]) -> None:
        self.cls = cls
        self.args = args
        self.name = _class_name(cls)
        self.fields: dict[str, _Codec] = {}
        self.required: frozenset[str] = getattr(cls, "__required_keys__", frozenset())

    def fill(self, builder: _Builder) -> None:
        mapping = _typevar_map(self.cls, self.args)
        for key, hint in _class_hints(self.cls).items():
            self.fields[key] = _field_codec(builder, self.cls, key, _substitute(hint, mapping))

    def encode(self, value: Any) -> Any:
        if not isinstance(value, Mapping):
            raise _expected(self.name, value)
        fields = self.fields
        _check_keys(value, fields, self.required, self.name)
        return {k: _enc_in(fields[k], v, k) for k, v in value.items()}

    def decode(self, value: Any) -> Any:
        value = _untag(value, _DICT_TAGS)
        if not isinstance(value, dict):
            raise _expected(self.name, value)
        fields = self.fields
        _check_keys(value, fields, self.required, self.name)
        return {k: _dec_in(fields[k], v, k) for k, v in value.items()}


class _NamedTupleCodec(_Codec):
    wire = frozenset({list})

    def __init__(self, cls: type, args: tuple[Any, ...]) -> None:
        self.cls = cls
        self.name = _class_name(cls)
        self.exact = (cls,)
        self.fields: tuple[tuple[str, _Codec], ...] = ()
        self.min_len = 0

    def fill(self, builder: _Builder) -> None:
        hints = _class_hints(self.cls)
        names: tuple[str, ...] = getattr(self.cls, "_fields", ())
        defaults: Mapping[str, Any] = getattr(self.cls, "_field_defaults", {})
        self.fields = tuple(
            (n, _field_codec(builder, self.cls, n, hints.get(n, Any))) for n in names
        )
        self.min_len = sum(1 for n in names if n not in defaults)

    def encode(self, value: Any) -> Any:
        if not _instance(value, self.exact):
            raise _expected(self.name, value)
        return [_enc_in(c, x, n, True) for (n, c), x in zip(self.fields, value, strict=True)]

    def decode(self, value: Any) -> Any:
        value = _untag(value, _TUPLE_TAGS)
        if not isinstance(value, list) or not self.min_len <= len(value) <= len(self.fields):
            raise _expected(self.name, value)
        # Shorter lists are fine when the missing trailing fields have defaults.
        items = [_dec_in(c, x, n, True) for (n, c), x in zip(self.fields, value, strict=False)]
        return self.cls(*items)


def _validation_summary(exc: Any) -> str:
    errors = exc.errors(include_url=False)
    parts = [
        f"{'.'.join(str(p) for p in err.get('loc', ())) or '<root>'}: {err.get('msg', '')}"
        for err in errors[:3]
    ]
    if len(errors) > 3:
        parts.append(f"and {len(errors) - 3} more")
    return "; ".join(parts)


class _PydanticCodec(_Codec):
    wire = frozenset({dict})

    def __init__(self, cls: type, args: tuple[Any, ...]) -> None:
        self.cls: Any = cls
        self.name = _class_name(cls)
        self.exact = (cls,)
        # Safe: a BaseModel subclass exists, so pydantic is already imported.
        self.error: Any = importlib.import_module("pydantic").ValidationError

    def encode(self, value: Any) -> Any:
        if isinstance(value, dict):
            value = self._validate(value)
        elif not isinstance(value, self.cls):
            raise _expected(self.name, value)
        return value.model_dump(mode="json")

    def decode(self, value: Any) -> Any:
        if not isinstance(value, dict):
            raise _expected(self.name, value)
        return self._validate(value)

    def _validate(self, data: dict[str, Any]) -> Any:
        try:
            return self.cls.model_validate(data)
        except self.error as exc:
            raise _Mismatch(f"invalid {self.name}: {_validation_summary(exc)}") from None


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
            raise _Mismatch(f"expected {self.full_name}, got {type_name}")
        return _parse_protobuf(self.cls, type_name, data)


# --------------------------------------------------------------------------- annotations


def _globals_of(obj: Any) -> dict[str, Any]:
    target = inspect.unwrap(obj) if callable(obj) else obj
    found = getattr(target, "__globals__", None)
    if isinstance(found, dict):
        return found
    module = sys.modules.get(getattr(target, "__module__", None) or "")
    return vars(module) if module is not None else {}


def _resolve_one(annotation: Any, globalns: dict[str, Any], localns: dict[str, Any]) -> Any:
    """Resolve one annotation on its own; an unresolvable forward reference becomes Any."""
    if not isinstance(annotation, str):
        return annotation
    holder = types.SimpleNamespace(__annotations__={"x": annotation})
    try:
        return typing.get_type_hints(holder, globalns, localns, include_extras=True)["x"]
    except Exception:  # any evaluation failure (NameError, SyntaxError, ...) means Any
        return Any


def _class_hints(cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls, include_extras=True)
    except Exception:  # one bad forward reference must not lose the resolvable fields
        hints: dict[str, Any] = {}
        for base in reversed(cls.__mro__):
            own = inspect.get_annotations(base)
            globalns, localns = _globals_of(base), dict(vars(cls))
            hints.update({k: _resolve_one(v, globalns, localns) for k, v in own.items()})
        return hints


def _function_hints(fn: Callable[..., Any], signature: inspect.Signature) -> dict[str, Any]:
    try:
        return typing.get_type_hints(fn, include_extras=True)
    except Exception:  # e.g. a forward reference only importable under TYPE_CHECKING
        globalns = _globals_of(fn)
        hints = {
            p.name: _resolve_one(p.annotation, globalns, {})
            for p in signature.parameters.values()
            if p.annotation is not p.empty
        }
        if signature.return_annotation is not signature.empty:
            hints["return"] = _resolve_one(signature.return_annotation, globalns, {})
        return hints


def _typevar_map(cls: type, args: tuple[Any, ...]) -> dict[Any, Any]:
    return dict(zip(getattr(cls, "__parameters__", ()), args, strict=False))


def _substitute(hint: Any, mapping: Mapping[Any, Any]) -> Any:
    """Replace a generic class's type variables in one field annotation."""
    if not mapping:
        return hint
    if isinstance(hint, typing.TypeVar):
        return mapping.get(hint, hint)
    params = getattr(hint, "__parameters__", ())
    if params and typing.get_origin(hint) is not None:
        return hint[tuple(mapping.get(p, p) for p in params)]
    return hint


_WRAPPERS = (typing.Annotated, typing.Required, typing.NotRequired, typing.Final)
_BARE: dict[Any, Any] = {
    list: list[Any],
    dict: dict[str, Any],
    tuple: tuple[Any, ...],
    set: set[Any],
    frozenset: frozenset[Any],
    cabc.Sequence: cabc.Sequence[Any],
    cabc.MutableSequence: cabc.MutableSequence[Any],
    cabc.Set: cabc.Set[Any],
    cabc.MutableSet: cabc.MutableSet[Any],
    cabc.Mapping: cabc.Mapping[str, Any],
    cabc.MutableMapping: cabc.MutableMapping[str, Any],
}


def _typevar_target(var: typing.TypeVar) -> Any:
    if var.__bound__ is not None:
        return var.__bound__
    if var.__constraints__:
        return functools.reduce(operator.or_, var.__constraints__)
    return Any


def _unwrap(tp: Any) -> Any:
    """Strip wrappers that do not change the wire form (Annotated, NewType, TypeVar...)."""
    while True:
        if typing.get_origin(tp) in _WRAPPERS:
            tp = typing.get_args(tp)[0]
        elif isinstance(tp, typing.NewType):
            tp = tp.__supertype__
        elif isinstance(tp, typing.TypeVar):
            tp = _typevar_target(tp)
        elif isinstance(tp, (str, typing.ForwardRef)):
            return Any  # left unresolved by the fallback resolution: treat as Any
        elif tp is None:
            return _NONE_TYPE
        else:
            return _lookup(_BARE, tp) or tp


def _lookup(table: Mapping[Any, Any], key: Any) -> Any:
    try:
        return table.get(key)
    except TypeError:  # an unhashable annotation argument; never in the tables
        return None


_SEQUENCE_KINDS: dict[Any, tuple[str, type, Callable[[list[Any]], Any] | None, bool]] = {
    list: ("list", list, None, False),
    tuple: ("tuple", tuple, tuple, False),
    cabc.Sequence: ("Sequence", cabc.Sequence, None, False),
    cabc.MutableSequence: ("MutableSequence", cabc.MutableSequence, None, False),
    set: ("set", set, set, True),
    frozenset: ("frozenset", frozenset, frozenset, True),
    cabc.Set: ("AbstractSet", cabc.Set, frozenset, True),
    cabc.MutableSet: ("MutableSet", cabc.MutableSet, set, True),
}
_MAPPING_KINDS: dict[Any, tuple[str, type]] = {
    dict: ("dict", dict),
    cabc.Mapping: ("Mapping", cabc.Mapping),
    cabc.MutableMapping: ("MutableMapping", cabc.MutableMapping),
}
_UNSUPPORTED_CLASS = (
    "arbitrary classes cannot be encoded; use a dataclass, TypedDict, NamedTuple, Enum, "
    "pydantic model or protobuf message"
)


def _is_pydantic_model(cls: type) -> bool:
    base = _optional_attr("pydantic.main", "BaseModel")
    return base is not None and issubclass(cls, base)


def _is_protobuf_message(cls: type) -> bool:
    base = _optional_attr("google.protobuf.message", "Message")
    return base is not None and issubclass(cls, base)


def _is_namedtuple(cls: type) -> bool:
    return issubclass(cls, tuple) and hasattr(cls, "_fields")


_ClassTest = Callable[[type], bool]
_ClassFactory = Callable[[Any, tuple[Any, ...]], _Codec]
_CLASS_KINDS: tuple[tuple[_ClassTest, _ClassFactory], ...] = (
    (lambda cls: issubclass(cls, enum.Enum), _EnumCodec),
    (_is_pydantic_model, _PydanticCodec),
    (_is_protobuf_message, _ProtobufCodec),
    (dataclasses.is_dataclass, _DataclassCodec),
    (typing.is_typeddict, _TypedDictCodec),
    (_is_namedtuple, _NamedTupleCodec),
)


class _Builder:
    """Compiles annotations into codecs; one per schema, memoising structured types."""

    def __init__(self) -> None:
        self._memo: dict[Any, _Codec] = {}

    def build(self, annotation: Any) -> _Codec:
        tp = _unwrap(annotation)
        simple: _Codec | None = _lookup(_SIMPLE, tp)
        if simple is not None:
            return simple
        origin = typing.get_origin(tp)
        if origin is not None:
            return self._build_generic(tp, origin, typing.get_args(tp))
        if isinstance(tp, type):
            return self._build_class(tp, ())
        raise _Unsupported(_annotation_text(tp), "not a type taskflow can encode")

    def _build_generic(self, tp: Any, origin: Any, args: tuple[Any, ...]) -> _Codec:
        if origin is typing.Union or origin is types.UnionType:
            return self._build_union(args)
        if origin is typing.Literal:
            return _LiteralCodec(args)
        if origin is tuple and args and (len(args) != 2 or args[1] is not Ellipsis):
            return _FixedTupleCodec([self.build(a) for a in args])
        if origin is tuple and not args and hasattr(tp, "__args__"):
            return _FixedTupleCodec([])  # tuple[()]; bare typing.Tuple has no __args__
        if origin in _SEQUENCE_KINDS:
            return self._build_sequence(origin, args)
        if origin in _MAPPING_KINDS:
            return self._build_mapping(origin, args)
        if isinstance(origin, type):
            return self._build_class(origin, args, generic=True)
        raise _Unsupported(_annotation_text(tp), "not a type taskflow can encode")

    def _build_union(self, args: tuple[Any, ...]) -> _Codec:
        others = [a for a in args if a is not _NONE_TYPE]
        if len(others) == 1 and len(args) == 2:
            return _OptionalCodec(self.build(others[0]))
        return _UnionCodec([self.build(a) for a in args])

    def _build_sequence(self, origin: Any, args: tuple[Any, ...]) -> _Codec:
        label, accept, build, sort = _SEQUENCE_KINDS[origin]
        item = self.build(args[0] if args else Any)
        name = f"{label}[{item.name}, ...]" if origin is tuple else f"{label}[{item.name}]"
        return _SeqCodec(item, name, (accept,), build, sort)

    def _build_mapping(self, origin: Any, args: tuple[Any, ...]) -> _Codec:
        label, accept = _MAPPING_KINDS[origin]
        key_type, value_type = args if len(args) == 2 else (str, Any)
        key = self.build(key_type)
        if key is _ANY:
            key = _SIMPLE[str]  # un-annotated dict keys must be str anyway
        if key.wire <= {str}:
            key_codec = _KeyCodec(key, numeric=False)
        elif key.wire == {int}:
            key_codec = _KeyCodec(key, numeric=True)
        else:
            raise _Unsupported(
                f"{label}[{key.name}, ...]", "dict keys must be str-like or int-like"
            )
        return _DictCodec(key_codec, self.build(value_type), label, accept)

    def _build_class(self, cls: type, args: tuple[Any, ...], generic: bool = False) -> _Codec:
        key = (cls, args)
        cached: _Codec | None = _lookup(self._memo, key)
        if cached is not None:
            return cached
        factory = next((make for test, make in _CLASS_KINDS if test(cls)), None)
        if factory is None:
            what = _annotation_text(cls)
            raise _Unsupported(what, "not a supported generic" if generic else _UNSUPPORTED_CLASS)
        codec = factory(cls, args)
        # Remember before filling so a self-referencing type finds this codec.
        with contextlib.suppress(TypeError):  # unhashable type arguments: just do not memoise
            self._memo[key] = codec
        codec.fill(self)
        return codec


# --------------------------------------------------------------------------- schema

_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
_KEYWORD = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


class PayloadSchema:
    """A task's compiled payload schema; build it with :func:`build_schema`.

    It checks that calls bind to the task's signature and converts arguments and results
    to and from their JSON-safe wire form. Errors are :class:`PayloadError` naming
    ``task_name``, the parameter (with a path into nested values) and the expected type.
    """

    def __init__(
        self,
        task_name: str,
        params: Sequence[inspect.Parameter],
        codecs: Mapping[str, _Codec],
        result: _Codec,
    ) -> None:
        self.task_name = task_name
        positional = [p for p in params if p.kind in _POSITIONAL]
        self._pos_names = tuple(p.name for p in positional)
        self._pos_codecs = tuple(codecs[p.name] for p in positional)
        self._n_posonly = sum(1 for p in positional if p.kind is p.POSITIONAL_ONLY)
        # Defaulted positional parameters always follow the required ones.
        self._n_required = sum(1 for p in positional if p.default is p.empty)
        self._kw_codecs = {p.name: codecs[p.name] for p in params if p.kind in _KEYWORD}
        self._kw_index = {
            p.name: i for i, p in enumerate(positional) if p.kind is p.POSITIONAL_OR_KEYWORD
        }
        self._kwonly_required = tuple(
            p.name for p in params if p.kind is p.KEYWORD_ONLY and p.default is p.empty
        )
        var_pos = next((p for p in params if p.kind is p.VAR_POSITIONAL), None)
        var_kw = next((p for p in params if p.kind is p.VAR_KEYWORD), None)
        self._var_pos_name = var_pos.name if var_pos else ""
        self._var_pos = codecs[var_pos.name] if var_pos else _ANY
        self._max_pos = sys.maxsize if var_pos else len(positional)
        self._var_kw = codecs[var_kw.name] if var_kw else None
        self._result = result

    def __repr__(self) -> str:
        return f"<PayloadSchema {self.task_name}>"

    # ----------------------------------------------------------------- binding

    def bind_check(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Raise :class:`PayloadError` unless ``args``/``kwargs`` bind to the signature."""
        self._bind(len(args), kwargs)

    def _bind(self, count: int, kwargs: Mapping[str, Any]) -> None:
        if count > self._max_pos:
            given = "was" if count == 1 else "were"
            raise self._call_error(
                f"takes {_plural(self._max_pos, 'positional argument')} but {count} {given} given"
            )
        if kwargs:
            self._check_keywords(count, kwargs)
        if count < self._n_required or self._kwonly_required:
            self._check_missing(count, kwargs)

    def _check_missing(self, count: int, kwargs: Mapping[str, Any]) -> None:
        missing = [
            name
            for index, name in enumerate(self._pos_names[count : self._n_required], count)
            if index < self._n_posonly or name not in kwargs
        ]
        missing += [name for name in self._kwonly_required if name not in kwargs]
        if missing:
            word = "argument" if len(missing) == 1 else "arguments"
            raise self._call_error(f"missing required {word} {', '.join(map(repr, missing))}")

    def _check_keywords(self, count: int, kwargs: Mapping[str, Any]) -> None:
        for name in kwargs:
            index = self._kw_index.get(name)
            if index is not None:
                if index < count:
                    raise self._call_error(f"got multiple values for argument {name!r}")
            elif name not in self._kw_codecs and self._var_kw is None:
                if name in self._pos_names[: self._n_posonly]:
                    raise self._call_error(f"positional-only argument {name!r} passed as keyword")
                raise self._call_error(f"got an unexpected keyword argument {name!r}")

    def _call_error(self, message: str) -> PayloadError:
        return PayloadError(f"{self.task_name}: {message}")

    # ----------------------------------------------------------------- conversion

    def encode_args(
        self, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[list[Any], dict[str, Any]]:
        """Check the call binds, then validate and encode every argument.

        Positional arguments stay positional and keywords stay keywords, so decoding
        reproduces the same call. Defaults are not filled in.
        """
        self.bind_check(args, kwargs)
        return self._positional(args, decode=False), self._keywords(kwargs, decode=False)

    def decode_args(
        self, args: list[Any], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """Turn wire arguments back into the annotated types, ready for the call."""
        if not isinstance(args, (list, tuple)) or not isinstance(kwargs, dict):
            raise self._call_error(
                f"malformed payload: args {type(args).__name__}, kwargs {type(kwargs).__name__}"
            )
        self._bind(len(args), kwargs)
        return tuple(self._positional(args, decode=True)), self._keywords(kwargs, decode=True)

    def encode_result(self, value: Any) -> Any:
        """Validate and encode a return value against the return annotation."""
        return self._convert(self._result, value, "return", decode=False)

    def decode_result(self, value: Any) -> Any:
        """Decode a wire return value back to the return annotation's type."""
        return self._convert(self._result, value, "return", decode=True)

    def _positional(self, args: Sequence[Any], *, decode: bool) -> list[Any]:
        codecs = self._pos_codecs
        limit = len(codecs)
        out: list[Any] = []
        for index, value in enumerate(args):
            codec = codecs[index] if index < limit else self._var_pos
            # Inline fast path: exact JSON scalars for scalar/Any parameters pass as they are.
            if type(value) in (codec.dec_fast if decode else codec.enc_fast):
                out.append(value)
            else:
                out.append(self._convert(codec, value, self._pos_label(index), decode))
        return out

    def _pos_label(self, index: int) -> str:
        if index < len(self._pos_names):
            return self._pos_names[index]
        return f"{self._var_pos_name}[{index - len(self._pos_names)}]"

    def _keywords(self, kwargs: Mapping[str, Any], *, decode: bool) -> dict[str, Any]:
        codecs = self._kw_codecs
        out: dict[str, Any] = {}
        for name, value in kwargs.items():
            # bind_check guarantees a **kwargs codec exists for names not in codecs.
            codec = codecs.get(name) or self._var_kw or _ANY
            if type(value) in (codec.dec_fast if decode else codec.enc_fast):
                out[name] = value
            else:
                out[name] = self._convert(codec, value, name, decode)
        return out

    def _convert(self, codec: _Codec, value: Any, label: str, decode: bool) -> Any:
        try:
            if decode:
                return value if type(value) in codec.dec_fast else codec.decode(value)
            return value if type(value) in codec.enc_fast else codec.encode(value)
        except _Mismatch as exc:
            raise PayloadError(f"{self.task_name}({label}{exc.where()}): {exc.message}") from None


def _payload_params(
    signature: inspect.Signature, task_name: str, skip_first: bool
) -> list[inspect.Parameter]:
    params = list(signature.parameters.values())
    if not skip_first:
        return params
    if not params or params[0].kind not in _POSITIONAL:
        raise PayloadError(
            f"{task_name}: a bound task needs a first positional parameter for the context"
        )
    return params[1:]


def _build_codec(builder: _Builder, task_name: str, label: str, hint: Any) -> _Codec:
    try:
        return builder.build(hint)
    except _Unsupported as exc:
        raise PayloadError(
            f"{task_name}({label}): unsupported annotation {exc.what}: {exc.reason}"
        ) from None


def build_schema(
    fn: Callable[..., Any], task_name: str, *, skip_first: bool = False
) -> PayloadSchema:
    """Compile ``fn``'s annotations into a :class:`PayloadSchema`, once per task.

    ``skip_first`` drops the first parameter (the task context of ``bind=True`` tasks),
    which is then not part of the payload and its annotation is ignored. Annotations
    that cannot be resolved (forward references) are treated as ``Any``; annotations
    taskflow cannot encode raise :class:`PayloadError` naming the task and parameter.
    """
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError) as exc:
        raise PayloadError(f"{task_name}: cannot read the task signature: {exc}") from None
    params = _payload_params(signature, task_name, skip_first)
    hints = _function_hints(fn, signature)
    builder = _Builder()
    codecs = {
        p.name: _build_codec(builder, task_name, p.name, hints.get(p.name, Any)) for p in params
    }
    result = _build_codec(builder, task_name, "return", hints.get("return", Any))
    return PayloadSchema(task_name, params, codecs, result)
