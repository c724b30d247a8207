"""Codecs for classes with typed fields: dataclasses, ``TypedDict`` and ``NamedTuple``."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from .annotations import _class_hints, _substitute, _typevar_map
from .core import (
    _DICT_TAGS,
    _TUPLE_TAGS,
    _class_name,
    _Codec,
    _dec_in,
    _enc_in,
    _expected,
    _instance,
    _Mismatch,
    _Unsupported,
    _untag,
)

if TYPE_CHECKING:
    from .builder import _Builder


def _check_keys(
    value: Mapping[str, Any], known: Mapping[str, Any], required: Iterable[str], what: str
) -> None:
    for key in value:
        if key not in known:
            # The unknown key came with the data: name the declared fields instead.
            fields = ", ".join(known) or "none"
            raise _Mismatch(f"unknown field for {what} (its fields: {fields})")
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
        except Exception as exc:  # e.g. raised by __post_init__ validation
            raise _constructor_error(self.name, exc) from None


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
        try:
            return self.cls(*items)
        except Exception as exc:  # a custom __new__ that validates
            raise _constructor_error(self.name, exc) from None


def _constructor_error(name: str, exc: Exception) -> _Mismatch:
    # The exception's text is the class's own and often quotes the offending value.
    return _Mismatch(f"could not build {name}: its constructor raised {type(exc).__name__}")


def _is_namedtuple(cls: type) -> bool:
    return issubclass(cls, tuple) and hasattr(cls, "_fields")
