"""Shared payload machinery: the codec base class, internal errors and small wire helpers."""

from __future__ import annotations

import base64
import math
import reprlib
import sys
import types
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .builder import _Builder


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
    """A short repr, for values from the *schema* only (literals, field names).

    Payload values never go into an error: errors reach logs, task records and dead
    letters, and arguments carry passwords, tokens and personal data.
    """
    text = _REPR.repr(value)
    return text if len(text) <= _MAX_REPR else text[: _MAX_REPR - 3] + "..."


def _describe(value: Any) -> str:
    """What a payload value is, for an error: its type, never its content."""
    if value is None:
        return "None"
    return _class_name(type(value))


def _expected(name: str, value: Any) -> _Mismatch:
    return _Mismatch(f"expected {name}, got {_describe(value)}")


class _DataKey:
    """Path segment of an entry of a data dict: its key is payload, so it is not shown."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<key>"


_DATA_KEY: Any = _DataKey()


def _segment(key: object, field: bool) -> str:
    if field:
        return f".{key}"
    if type(key) is int:
        return f"[{key}]"
    if key is _DATA_KEY:
        return "[<key>]"
    return f"[{key!r}]"  # a declared key (TypedDict): part of the schema


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


# --------------------------------------------------------------------------- wire helpers

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
    raise _Mismatch("expected finite float, got NaN or infinity (JSON has neither)")


def _b64(data: bytes | bytearray | memoryview) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes:
    # binascii.Error for bad base64, ValueError for non-ASCII text: both ValueErrors.
    return base64.b64decode(text, validate=True)


def _optional_attr(module: str, name: str) -> Any:
    """``module.name`` if the optional library is already imported, else ``None``."""
    return getattr(sys.modules.get(module), name, None)
