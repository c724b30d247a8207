"""Pydantic v2 models: ``model_dump(mode="json")`` out, ``model_validate`` in.

Pydantic is never imported here at import time; a model annotation implies it is loaded.
"""

from __future__ import annotations

import importlib
from typing import Any

from .core import _class_name, _Codec, _expected, _Mismatch, _optional_attr


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


def _is_pydantic_model(cls: type) -> bool:
    base = _optional_attr("pydantic.main", "BaseModel")
    return base is not None and issubclass(cls, base)
