"""The task registry: names to task definitions, duplicates refused."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from ..errors import DuplicateTask, NotRegistered
from .taskdef import TaskDef

__all__ = ["TaskRegistry"]


class TaskRegistry:
    """Holds an app's tasks by name. Registering never touches the network."""

    def __init__(self) -> None:
        self._tasks: dict[str, TaskDef] = {}
        self.version = 0
        """Counts registrations (a task declared again counts too): what is derived from
        the tasks is stale when it changed; read-only."""

    def add(self, task: TaskDef) -> None:
        """Register ``task``; the same function twice is fine, another one is not."""
        existing = self._tasks.get(task.name)
        if existing is not None and not _same_function(existing.fn, task.fn):
            raise DuplicateTask(
                f"task name {task.name!r} is already registered to "
                f"{existing.fn.__module__}.{existing.fn.__qualname__}"
            )
        self._tasks[task.name] = task
        self.version += 1

    def get(self, name: str) -> TaskDef | None:
        """The task, or None."""
        return self._tasks.get(name)

    def unstored(self, name: str | None) -> bool:
        """Whether ``name`` is declared here with ``store_result=False``: its outcome is
        never written, so no wait for it could end. False for a task not declared here
        (another program's declaration decides)."""
        task = self._tasks.get(name) if name else None
        return task is not None and not task.options.store_result

    def __getitem__(self, name: str) -> TaskDef:
        try:
            return self._tasks[name]
        except KeyError:
            raise NotRegistered(name) from None

    def __contains__(self, name: object) -> bool:
        return name in self._tasks

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._tasks))

    def __len__(self) -> int:
        return len(self._tasks)


def _same_function(a: Any, b: Any) -> bool:
    # A module imported twice (e.g. as __main__ and by name) yields distinct but equal
    # functions: same qualified name and same code location.
    if a is b:
        return True
    code_a, code_b = getattr(a, "__code__", None), getattr(b, "__code__", None)
    return (
        getattr(a, "__qualname__", None) == getattr(b, "__qualname__", None)
        and code_a is not None
        and code_b is not None
        and code_a.co_filename == code_b.co_filename
        and code_a.co_firstlineno == code_b.co_firstlineno
    )
