"""``TaskDef``: what the kernel and the engines know of a task.

The function, its name, its checked options, the payload schema built from its signature,
whether it is a coroutine function, and its own hooks by kind -- each worked out once, when
the task is declared, so nothing is looked up per message. ``Task`` (:mod:`taskflow.task`)
is a ``TaskDef`` with the sending API on top; engines see only this.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

from ..eventbus import HookKind
from ..options import TaskOptions
from ..payload import PayloadSchema, build_schema
from .hooks import Hook

__all__ = ["TaskDef"]


class TaskDef:
    """A registered function and everything needed to run it and settle its outcome."""

    def __init__(self, fn: Callable[..., Any], name: str, options: TaskOptions) -> None:
        self.fn = fn
        self.name = name
        self.options = options
        self.is_async = inspect.iscoroutinefunction(fn)
        self.schema: PayloadSchema = build_schema(fn, name, skip_first=options.bind)
        own = {
            HookKind.SUCCESS: options.on_success,
            HookKind.FAILURE: options.on_failure,
            HookKind.RETRY: options.on_retry,
            HookKind.START: options.on_start,
        }
        self.hooks: Mapping[str, tuple[Hook, ...]] = MappingProxyType(
            {kind: (hook,) for kind, hook in own.items() if hook is not None}
        )
        """The task's own hooks by kind (``on_success=`` ...), added after the app's."""

    def __repr__(self) -> str:
        return f"<TaskDef {self.name}>"
