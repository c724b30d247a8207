"""Pydantic v2 models: ``model_dump(mode="json")`` out, ``model_validate`` in.

Pydantic is never imported here at import time; a model annotation implies it is loaded.
"""

from __future__ import annotations

import importlib
import typing
from collections.abc import Mapping
from typing import Any

from .core import _class_name, _Codec, _expected, _Mismatch, _optional_attr

# Error types whose message is written by the model's own validators: it may quote the
# value, so only the type is shown.
_CUSTOM = frozenset({"value_error", "assertion_error"})


def _location(model: Any, loc: Any) -> str:
    """``loc`` as a path, showing only the names of declared fields.

    A string in a location is either a field name or the key of a dict field, and keys come
    with the data: each string is checked against the fields of the model at that point.
    """
    fields: Mapping[str, Any] = getattr(model, "model_fields", {})
    parts = []
    for part in loc:
        if type(part) is int:
            parts.append(f"[{part}]")
        elif isinstance(part, str) and part in fields:
            parts.append(f".{part}" if parts else part)
            fields = getattr(_nested_model(fields[part].annotation), "model_fields", {})
        else:
            parts.append("[<key>]")
    return "".join(parts) or "<root>"


def _nested_model(annotation: Any) -> Any:
    """The model a field holds, directly or inside ``list[...]``/``dict[...]``/``X | None``."""
    if isinstance(annotation, type) and hasattr(annotation, "model_fields"):
        return annotation
    for arg in typing.get_args(annotation):
        found = _nested_model(arg)
        if found is not None:
            return found
    return None


def _validation_summary(model: Any, exc: Any) -> str:
    """Where and why, in pydantic's words, without the input (never its value)."""
    errors = exc.errors(include_url=False, include_input=False, include_context=False)
    parts = []
    for err in errors[:3]:
        kind = str(err.get("type", ""))
        why = f"failed {kind}" if kind in _CUSTOM else str(err.get("msg", kind))
        parts.append(f"{_location(model, err.get('loc', ()))}: {why}")
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
            summary = _validation_summary(self.cls, exc)
            raise _Mismatch(f"invalid {self.name}: {summary}") from None
        except Exception as exc:  # a validator raising something pydantic does not wrap
            kind = type(exc).__name__
            raise _Mismatch(f"invalid {self.name}: a validator raised {kind}") from None


def _is_pydantic_model(cls: type) -> bool:
    base = _optional_attr("pydantic.main", "BaseModel")
    return base is not None and issubclass(cls, base)
