"""Lifecycle hooks: the app's, by kind, and each task's own, run isolated from the task.

A hook that raises is logged and never changes a task's outcome nor stops a worker; a
coroutine hook is awaited. The app's hooks are kept by kind; a task's own hooks
(``on_success=`` and friends) are resolved once, when its :class:`~.taskdef.TaskDef` is
built, so announcing an event is a lookup, never a search by name.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

from ..errors import USER_CODE_ERRORS
from ..eventbus import HOOK_KINDS, HookKind, TaskEvent

__all__ = ["Hook", "Hooks", "OwnHooks", "run_hooks"]

log = logging.getLogger("taskflow.middleware")

Hook = Callable[[TaskEvent], Any]


class OwnHooks(Protocol):
    """Anything with hooks of its own by kind: a :class:`~.taskdef.TaskDef`."""

    @property
    def hooks(self) -> Mapping[str, tuple[Hook, ...]]: ...


class Hooks:
    """The app's hooks by kind, and the runner that adds a task's own."""

    def __init__(self) -> None:
        self._by_kind: dict[str, list[Hook]] = {kind: [] for kind in HookKind}

    @staticmethod
    def check(kind: str) -> None:
        """Raise ValueError unless ``kind`` is a hook kind."""
        if kind not in HOOK_KINDS:
            raise ValueError(f"unknown hook kind {kind!r}; known: {', '.join(sorted(HOOK_KINDS))}")

    def add(self, kind: str, hook: Hook) -> None:
        """Call ``hook`` for every event of ``kind``; raises ValueError for an unknown kind."""
        self.check(kind)
        self._by_kind[kind].append(hook)

    def __getitem__(self, kind: str) -> list[Hook]:
        """The app's hooks of ``kind`` (a live list)."""
        return self._by_kind[kind]

    def wants(self, kind: str, task: OwnHooks | None = None) -> bool:
        """Whether an event of ``kind`` (for ``task``) would reach any hook."""
        return bool(self._by_kind[kind]) or (task is not None and kind in task.hooks)

    async def run(self, kind: str, event: TaskEvent, task: OwnHooks | None = None) -> None:
        """Run the app's hooks of ``kind``, then ``task``'s own; never raises."""
        own = task.hooks.get(kind, ()) if task is not None else ()
        await run_hooks(kind, (*self._by_kind[kind], *own), event)


async def run_hooks(kind: str, hooks: Iterable[Hook], event: TaskEvent) -> None:
    """Call each hook with ``event`` (awaiting coroutine hooks); one that raises is logged."""
    for hook in hooks:
        try:
            out = hook(event)
            if inspect.isawaitable(out):
                await out
        except USER_CODE_ERRORS:  # a sys.exit() too: the worker's loop runs the hooks
            log.exception(
                "%s hook %r failed for task %s[%s]; ignored",
                kind,
                getattr(hook, "__qualname__", hook),
                event.task_name,
                event.task_id,
            )
