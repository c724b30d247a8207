"""The envelope: the frozen, versioned unit that travels through brokers.

The wire format is specified in ``docs/protocol.md``. Nothing mutates an envelope: a retry
publishes a copy made with :meth:`Envelope.replace` (the next attempt, its due time).
"""

from __future__ import annotations

import dataclasses
import enum
import traceback
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "MAX_ERROR_MESSAGE",
    "MAX_TRACEBACK",
    "PROTOCOL_VERSION",
    "TERMINAL_STATUSES",
    "Envelope",
    "TaskStatus",
    "envelope_of",
    "error_info",
    "error_message",
]

PROTOCOL_VERSION = 1


class TaskStatus(enum.StrEnum):
    """Where a task is in its life. Terminal statuses never change again."""

    PENDING = "pending"
    SCHEDULED = "scheduled"
    QUEUED = "queued"
    RUNNING = "running"
    RETRYING = "retrying"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"

    terminal: bool
    """True for succeeded, failed, cancelled and expired (:data:`TERMINAL_STATUSES`; a
    plain attribute, not a property: the worker reads it several times per task)."""


TERMINAL_STATUSES = frozenset(
    {TaskStatus.SUCCEEDED, TaskStatus.FAILED, TaskStatus.CANCELLED, TaskStatus.EXPIRED}
)
for _status in TaskStatus:
    _status.terminal = _status in TERMINAL_STATUSES
del _status


_set = object.__setattr__


@dataclass(frozen=True, init=False)
class Envelope:
    """One task message. Times are float epoch seconds (UTC); durations float seconds.

    ``args``/``kwargs`` hold the payload already encoded to JSON-safe values by the task's
    payload schema; brokers never look inside them.
    """

    # One is built per send and per delivery. The generated __init__ of a frozen
    # dataclass stores each field with its own object.__setattr__ call (about half of
    # the time of building a send); this one stores the instance's __dict__ at once.
    # tests/unit/test_codec.py checks that it takes exactly the fields, with their defaults.

    id: str
    task: str
    queue: str
    args: list[Any] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)
    priority: int = 0
    created_at: float = 0.0
    eta: float | None = None
    expires: float | None = None
    attempt: int = 1
    max_retries: int = 0
    timeout: float | None = None
    idempotency_key: str | None = None
    # Set by foreign producers, never by taskflow; carried unchanged on every copy (a
    # retry, a replay) for the producer's own tracing (protocol.md).
    correlation_id: str | None = None
    # Lineage (protocol.md): the task that sent this one or preceded it in a canvas, and
    # the first task of that line; None for a task sent on its own. Kept on every copy.
    parent_id: str | None = None
    root_id: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    canvas: dict[str, Any] | None = None
    content_type: str = "application/json"
    v: int = PROTOCOL_VERSION

    def __init__(  # noqa: PLR0917 -- positional like the dataclass __init__ it replaces
        self,
        id: str,
        task: str,
        queue: str,
        args: list[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        priority: int = 0,
        created_at: float = 0.0,
        eta: float | None = None,
        expires: float | None = None,
        attempt: int = 1,
        max_retries: int = 0,
        timeout: float | None = None,
        idempotency_key: str | None = None,
        correlation_id: str | None = None,
        parent_id: str | None = None,
        root_id: str | None = None,
        headers: dict[str, str] | None = None,
        canvas: dict[str, Any] | None = None,
        content_type: str = "application/json",
        v: int = PROTOCOL_VERSION,
    ) -> None:
        _set(
            self,
            "__dict__",
            {
                "id": id,
                "task": task,
                "queue": queue,
                "args": [] if args is None else args,
                "kwargs": {} if kwargs is None else kwargs,
                "priority": priority,
                "created_at": created_at,
                "eta": eta,
                "expires": expires,
                "attempt": attempt,
                "max_retries": max_retries,
                "timeout": timeout,
                "idempotency_key": idempotency_key,
                "correlation_id": correlation_id,
                "parent_id": parent_id,
                "root_id": root_id,
                "headers": {} if headers is None else headers,
                "canvas": canvas,
                "content_type": content_type,
                "v": v,
            },
        )

    def replace(self, **changes: Any) -> Envelope:
        """A copy with ``changes`` applied."""
        return dataclasses.replace(self, **changes)


def envelope_of(fields: dict[str, Any]) -> Envelope:
    """An envelope holding ``fields`` as they are: every field of :class:`Envelope`, in its
    order, each already checked (the decoder's way to make one, without the constructor's
    keyword call; ``tests/unit/test_codec.py`` checks what it makes)."""
    env = object.__new__(Envelope)
    _set(env, "__dict__", fields)
    return env


MAX_ERROR_MESSAGE = 8_192
"""Characters of an error's message a record keeps (the rest is cut, and the cut said)."""
MAX_TRACEBACK = 32_768
"""Characters of a traceback a record keeps: its first lines and its last, where the error
was raised."""


def error_info(exc: BaseException) -> dict[str, str]:
    """The error fields stored in a failed record."""
    kind = type(exc)
    name = (
        kind.__qualname__
        if kind.__module__ == "builtins"
        else f"{kind.__module__}.{kind.__qualname__}"
    )
    return {
        "type": name,
        "message": _cut(error_message(exc), MAX_ERROR_MESSAGE, keep_end=False),
        "traceback": _cut(format_traceback(exc), MAX_TRACEBACK, keep_end=True),
    }


def _cut(text: str, limit: int, *, keep_end: bool) -> str:
    """``text`` at most about ``limit`` characters long: its start, or (``keep_end``) its
    first eighth and the rest from its end, with how much was left out in between."""
    if len(text) <= limit:
        return text
    if not keep_end:
        return f"{text[:limit]} [... {len(text) - limit:,} more characters]"
    head = limit // 8
    left_out = len(text) - limit
    return f"{text[:head]}\n[... {left_out:,} characters left out ...]\n{text[-(limit - head) :]}"


def error_message(exc: BaseException) -> str:
    """``str(exc)``, or a placeholder when the exception's ``__str__`` itself fails (as
    ``traceback`` writes it): a failure that cannot be described is still recorded."""
    try:
        return str(exc)
    except Exception:
        return f"<exception str() failed: {type(exc).__name__}>"


_CAUSE = "\nThe above exception was the direct cause of the following exception:\n\n"
_CONTEXT = "\nDuring handling of the above exception, another exception occurred:\n\n"


def format_traceback(exc: BaseException) -> str:
    """``exc``'s traceback as ``traceback.format_exception`` writes it, causes and contexts
    first, without the column markers (``^^^^``) Python 3.11 adds under each line.

    Finding those columns walks each frame's code object up to the failing instruction and
    parses the source line; on a worker whose tasks fail, that was a third of its event
    loop's time. An exception group is formatted by ``traceback`` as it is (its members
    are nested)."""
    if isinstance(exc, BaseExceptionGroup):
        return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    # The chain from ``exc`` back to its first cause, each with the note that leads to it
    # from the one before it in the text (its cause or context).
    chain: list[tuple[BaseException, str]] = []
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if current.__cause__ is not None:
            earlier, note = current.__cause__, _CAUSE
        elif current.__context__ is not None and not current.__suppress_context__:
            earlier, note = current.__context__, _CONTEXT
        else:
            earlier, note = None, ""
        if earlier is not None and id(earlier) in seen:
            earlier, note = None, ""
        chain.append((current, note))
        current = earlier
    lines: list[str] = []
    for item, note in reversed(chain):
        lines.append(note)  # how it follows from the one before ("" for the first)
        if item.__traceback__ is not None:
            lines.append("Traceback (most recent call last):\n")
            frames = traceback.StackSummary.extract(traceback.walk_tb(item.__traceback__))
            lines.extend(frames.format())
        lines.extend(traceback.format_exception_only(type(item), item))
    return "".join(lines)
