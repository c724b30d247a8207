"""Compiling annotations into trees of codecs."""

from __future__ import annotations

import collections.abc as cabc
import contextlib
import dataclasses
import enum
import types
import typing
from collections.abc import Callable
from typing import Any

from .annotations import _lookup, _unwrap
from .choices import _EnumCodec, _LiteralCodec, _OptionalCodec, _UnionCodec
from .containers import _DictCodec, _FixedTupleCodec, _KeyCodec, _SeqCodec
from .core import _NONE_TYPE, _annotation_text, _Codec, _Unsupported
from .protobuf import _is_protobuf_message, _ProtobufCodec
from .pydantic import _is_pydantic_model, _PydanticCodec
from .scalars import _SIMPLE
from .structured import _DataclassCodec, _is_namedtuple, _NamedTupleCodec, _TypedDictCodec
from .tagged import _ANY

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
