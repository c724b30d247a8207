"""The running task's context (``bind=True`` and :func:`current_task`)."""

from __future__ import annotations

import contextvars
import threading
from dataclasses import dataclass, field

from ._waiters import wait_limit
from .errors import Retry

__all__ = ["CancelEvent", "TaskContext", "current_task"]


class CancelEvent:
    """Set when a task is cancelled or times out: ``is_set()``, ``wait(timeout)``, ``set()``.

    Behaves like :class:`threading.Event` but costs nothing until somebody waits on it
    (one is made for every task run).
    """

    __slots__ = ("_event", "_flag", "reason")

    _guard = threading.Lock()

    def __init__(self) -> None:
        self._flag = False
        self._event: threading.Event | None = None
        self.reason: str | None = None  # "cancelled", "timeout" or "shutdown" once set

    def is_set(self) -> bool:
        """True once set."""
        return self._flag

    def set(self, reason: str = "cancelled") -> None:
        """Set the flag (keeping the first ``reason``) and wake waiters."""
        if self.reason is None:
            self.reason = reason
        self._flag = True
        with CancelEvent._guard:
            event = self._event
        if event is not None:
            event.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until set (or ``timeout``); returns the flag."""
        if self._flag:
            return True
        with CancelEvent._guard:
            if self._event is None:
                self._event = threading.Event()
                if self._flag:
                    self._event.set()
            event = self._event
        return event.wait(wait_limit(timeout))

    def __bool__(self) -> bool:
        return self._flag


_current: contextvars.ContextVar[TaskContext | None] = contextvars.ContextVar(
    "taskflow_current_task", default=None
)


@dataclass(slots=True, eq=False)
class TaskContext:
    """What a running task knows about itself.

    ``attempt`` is 1 on the first run; ``retries`` the maximum number of retries;
    ``deadline`` the epoch time the attempt must finish by (None: no timeout);
    ``cancelled`` is set when the task is cancelled or times out; ``delivery`` is 1 plus
    the number of times this attempt was lost with its worker and delivered again;
    ``enqueued_at`` the epoch time its message was first sent (0.0: not known);
    ``root_id`` the first task of its canvas or of the tasks that sent it, ``parent_id``
    the task that sent it or preceded it in a canvas (both None for a task sent on its own).
    """

    id: str
    name: str
    attempt: int = 1
    retries: int = 0
    queue: str = "default"
    priority: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    deadline: float | None = None
    cancelled: CancelEvent = field(default_factory=CancelEvent)
    delivery: int = 1
    enqueued_at: float = 0.0
    root_id: str | None = None
    parent_id: str | None = None

    def retry(self, countdown: float | None = None, exc: BaseException | None = None) -> Retry:
        """Ask for a retry: raises :class:`~taskflow.errors.Retry` (typed as returning it
        so that ``raise ctx.retry()`` also reads well). The worker checks ``countdown``
        (:func:`taskflow.options.countdown_problem`)."""
        raise Retry(countdown=countdown, exc=exc)


def current_task() -> TaskContext | None:
    """The context of the task running in this thread/coroutine, or None."""
    return _current.get()


# The context variable's own methods, not functions calling them: the worker binds and
# unbinds the current task around every body.
set_current = _current.set
"""Bind a task's context as the current task (used by the worker); returns the token
:func:`reset_current` takes."""

reset_current = _current.reset
"""Undo :func:`set_current`."""
