"""Codecs for scalar annotations: numbers, text, bool, None, dates and times, UUID, Decimal."""

from __future__ import annotations

import typing
from collections.abc import Callable
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID

from .core import _NONE_TYPE, _b64, _Codec, _expected, _finite, _unb64, _untag
from .tagged import _ANY


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
