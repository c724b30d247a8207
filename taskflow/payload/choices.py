"""Codecs that pick among values or types: ``Enum``, ``Literal``, ``Optional`` and ``Union``."""

from __future__ import annotations

import enum
from typing import Any

from .core import _NONE_TYPE, _class_name, _Codec, _expected, _Mismatch, _short_repr, _Unsupported
from .tagged import _encode_any


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
