"""Codecs for collections: sequences and sets, fixed tuples and dicts with typed keys."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .core import (
    _DATA_KEY,
    _DICT_TAGS,
    _NOT_SEQUENCES,
    _SEQ_TAGS,
    _TUPLE_TAGS,
    _Codec,
    _dec_in,
    _enc_in,
    _expected,
    _instance,
    _Mismatch,
    _ordered,
    _segment,
    _untag,
)


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
        except TypeError:  # unhashable elements for a set
            raise _Mismatch(f"cannot build {self.name}: an element is unhashable") from None


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
        error.path.append(_segment(_DATA_KEY, False))
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
        return {to_wire(k): _enc_in(item, v, _DATA_KEY) for k, v in value.items()}

    def decode(self, value: Any) -> Any:
        value = _untag(value, _DICT_TAGS)
        if not isinstance(value, dict):
            raise _expected(self.name, value)
        from_wire, item = self.key.from_wire, self.item
        return {from_wire(k): _dec_in(item, v, _DATA_KEY) for k, v in value.items()}
