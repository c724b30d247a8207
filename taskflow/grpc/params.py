"""Parameter annotations of a task, for unpacking ``google.protobuf.Any`` arguments.

A ``message`` argument must go to a parameter annotated with a protobuf message class
(or ``X | None``); its ``Any.type_url`` must name that message type.
"""

from __future__ import annotations

import inspect
import types
import typing
from typing import Any

from google.protobuf.message import DecodeError, Message

from ..kernel.taskdef import TaskDef

__all__ = ["ParamTypes"]

_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


def _message_class(hint: Any) -> type[Message] | None:
    """The protobuf class ``hint`` names (``X`` or ``X | None``), else None."""
    if isinstance(hint, type) and issubclass(hint, Message):
        return hint
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        found = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(found) == 1:
            return _message_class(found[0])
    return None


class ParamTypes:
    """The parameter names and annotations of one task, looked up by position or name."""

    def __init__(self, task: TaskDef) -> None:
        self.task = task.name
        params = list(inspect.signature(task.fn).parameters.values())
        if task.options.bind:
            params = params[1:]
        try:
            hints = typing.get_type_hints(task.fn)
        except Exception:  # unresolvable forward references: no protobuf parameters then
            hints = {}
        self._positional = [(p.name, hints.get(p.name)) for p in params if p.kind in _POSITIONAL]
        self._keyword = {
            p.name: (p.name, hints.get(p.name))
            for p in params
            if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        }
        var_pos = next((p for p in params if p.kind is p.VAR_POSITIONAL), None)
        var_kw = next((p for p in params if p.kind is p.VAR_KEYWORD), None)
        self._var_pos = (var_pos.name, hints.get(var_pos.name)) if var_pos else None
        self._var_kw = (var_kw.name, hints.get(var_kw.name)) if var_kw else None

    def positional(self, index: int) -> tuple[str, Any]:
        """``(label, annotation)`` of positional argument ``index``."""
        if index < len(self._positional):
            return self._positional[index]
        if self._var_pos is not None:
            return (f"{self._var_pos[0]}[{index - len(self._positional)}]", self._var_pos[1])
        return (f"argument {index + 1}", None)  # the signature check reports the count

    def keyword(self, name: str) -> tuple[str, Any]:
        """``(label, annotation)`` of keyword argument ``name``."""
        found = self._keyword.get(name)
        if found is not None:
            return found
        if self._var_kw is not None:
            return (name, self._var_kw[1])
        return (name, None)  # the signature check reports the unexpected keyword

    def unpack(self, label: str, hint: Any, type_url: str, value: bytes) -> Message:
        """The message of an ``Any`` for parameter ``label``; ``ValueError`` naming the
        task, the parameter and the expected type when it does not fit."""
        where = f"{self.task}({label})"
        cls = _message_class(hint)
        if cls is None:
            raise ValueError(
                f"{where}: a protobuf Any was given, but the parameter is not annotated "
                "with a protobuf message type; send it as json"
            )
        expected = cls.DESCRIPTOR.full_name
        got = type_url.rpartition("/")[2]
        if got != expected:
            raise ValueError(f"{where}: expected protobuf type {expected}, got {got or '(none)'}")
        try:
            return cls.FromString(value)
        except DecodeError:
            raise ValueError(f"{where}: the bytes are not a valid {expected}") from None
