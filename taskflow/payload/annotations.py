"""Reading annotations: resolving type hints, unwrapping wrappers, substituting type variables."""

from __future__ import annotations

import collections.abc as cabc
import functools
import inspect
import operator
import sys
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any

from .core import _NONE_TYPE


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
