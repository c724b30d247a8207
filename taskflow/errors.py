"""The taskflow exception tree.

Every exception taskflow raises on purpose derives from :class:`TaskflowError`::

    TaskflowError
    ├── ConfigError            bad URL, unknown scheme, invalid option (also a ValueError)
    ├── NotRegistered          a task name nobody registered (also a KeyError)
    ├── DuplicateTask          two functions registered under one name
    ├── NotFound               no record for a task / group / chain id (also a KeyError)
    │   └── UnknownQueue       an operator action names a queue the broker does not know
    ├── PayloadError           arguments or results that do not fit their annotations
    │                          (also a TypeError)
    ├── IdempotencyConflict    one idempotency key, different arguments
    ├── QueueFull              a bounded queue is at its limit; nothing was enqueued
    ├── BrokerError            connection / protocol problems (URL with password masked)
    │   └── AuditNotWritten    an admin action took effect; its audit entry was refused
    ├── Unsupported            the backend cannot answer this operator question
    ├── TaskFailed             the task ran and failed; carries the remote error
    ├── TaskCancelled          the task was cancelled before or while running
    ├── TaskTimeout            an attempt overran its deadline (also a TimeoutError)
    ├── WorkerLost             workers died running the task on every allowed delivery
    ├── WorkerCrashed          a stage of a worker died; the worker stopped (exit non-zero)
    ├── ResultTimeout          waiting for a result took too long (also a TimeoutError)
    └── ControlFlow            signals raised *by task code* to steer the worker
        ├── Retry              retry this task (optional countdown)
        └── Reject             dead-letter this task at once, no retry
"""

from __future__ import annotations

from ._masking import mask_url

__all__ = [
    "AuditNotWritten",
    "BrokerError",
    "ConfigError",
    "ControlFlow",
    "DuplicateTask",
    "IdempotencyConflict",
    "NotFound",
    "NotRegistered",
    "PayloadError",
    "QueueFull",
    "RecordTooLarge",
    "Reject",
    "ResultTimeout",
    "Retry",
    "TaskCancelled",
    "TaskFailed",
    "TaskTimeout",
    "TaskflowError",
    "UnknownQueue",
    "Unsupported",
    "WorkerCrashed",
    "WorkerLost",
    "mask_url",
]


USER_CODE_ERRORS: tuple[type[BaseException], ...] = (Exception, SystemExit, KeyboardInterrupt)
"""What user code run by a worker (a body, a hook, execute middleware) may raise that the
worker takes as that code's failure rather than let it end the worker's loop: ``sys.exit()``
and ``KeyboardInterrupt`` too, which a worker never gets from a signal (it handles SIGINT)."""


def stop_iteration_error(exc: StopIteration, raiser: str = "the task's body") -> RuntimeError:
    """What a body's (or a hook's: ``raiser``) ``StopIteration`` becomes: a
    ``RuntimeError`` caused by it, as Python makes of one out of a coroutine (a future
    refuses ``StopIteration`` itself)."""
    error = RuntimeError(f"{raiser} raised StopIteration")
    error.__cause__ = exc
    return error


class TaskflowError(Exception):
    """Base class of every error taskflow raises on purpose."""


class ConfigError(TaskflowError, ValueError):
    """Invalid configuration: unknown URL scheme, malformed URL, bad option value."""


class NotRegistered(TaskflowError, KeyError):
    """No task is registered under this name."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name

    def __str__(self) -> str:
        return f"task {self.name!r} is not registered"


class DuplicateTask(TaskflowError):
    """Two different functions were registered under the same task name."""


class NotFound(TaskflowError, KeyError):
    """No record exists for the given id."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "not found"


class UnknownQueue(NotFound):
    """An operator action names a queue the broker does not know."""


class Unsupported(TaskflowError):
    """The backend cannot answer this operator question (the message names the backend)."""


class PayloadError(TaskflowError, TypeError):
    """A value does not fit its annotation (at enqueue, in the worker, or in ``get()``)."""


class RecordTooLarge(PayloadError):
    """A result store cannot hold a record this large (a NATS server's ``max_payload``).

    A worker does not retry such a write: a task whose result is too large to store fails
    with this error instead (its message dead-lettered with reason ``payload``)."""


class IdempotencyConflict(TaskflowError):
    """An idempotency key was reused with different task or arguments."""


class QueueFull(TaskflowError):
    """A bounded queue is full; nothing was enqueued."""


class BrokerError(TaskflowError):
    """A broker or result store could not be reached or answered wrongly."""


class AuditNotWritten(BrokerError):
    """An admin action took effect, but the result store refused its audit entry.

    The action is not undone and must not simply be run again (a purge would drop what
    arrived since): the message says what was done, and the entry is logged at ERROR on
    the ``taskflow.audit`` logger instead. ``action``, ``target`` and ``count`` are the
    entry's own fields.
    """

    def __init__(self, message: str, *, action: str, target: str, count: int) -> None:
        super().__init__(message)
        self.action = action
        self.target = target
        self.count = count


class TaskFailed(TaskflowError):
    """The task ran and failed. Carries the remote exception type, message and traceback."""

    def __init__(
        self, task_id: str, exc_type: str, message: str, traceback: str | None = None
    ) -> None:
        super().__init__(task_id, exc_type, message)
        self.task_id = task_id
        self.exc_type = exc_type
        self.message = message
        self.traceback = traceback or ""

    def __str__(self) -> str:
        return f"task {self.task_id} failed: {self.exc_type}: {self.message}"


class TaskCancelled(TaskflowError):
    """The task was cancelled (before it started, or while it ran)."""

    def __init__(self, task_id: str, message: str = "cancelled") -> None:
        super().__init__(task_id, message)
        self.task_id = task_id
        self.message = message

    def __str__(self) -> str:
        return f"task {self.task_id} {self.message}"


class TaskTimeout(TaskflowError, TimeoutError):
    """An attempt ran past its deadline."""


class WorkerLost(TaskflowError):
    """The worker running the task died (lease lost) on each delivery the task allowed."""


class WorkerCrashed(TaskflowError):
    """A stage of a worker (fetching, lease renewal, control) died and stopped the worker.

    ``Worker.run()`` and ``App.run_worker()`` raise it; ``taskflow worker`` exits non-zero
    so that a supervisor restarts the process. The stage's exception is the ``__cause__``.
    """


class ResultTimeout(TaskflowError, TimeoutError):
    """``AsyncResult.get()`` gave up waiting."""


class ControlFlow(TaskflowError):
    """Base of the signals task code raises to steer the worker (not failures)."""


class Retry(ControlFlow):
    """Raise from a task to retry it; ``countdown`` overrides the backoff delay."""

    def __init__(self, countdown: float | None = None, exc: BaseException | None = None) -> None:
        super().__init__(countdown, exc)
        self.countdown = countdown
        self.exc = exc

    def __str__(self) -> str:
        reason = f": {self.exc!r}" if self.exc is not None else ""
        when = f" in {self.countdown}s" if self.countdown is not None else ""
        return f"retry requested{when}{reason}"


class Reject(ControlFlow):
    """Raise from a task to dead-letter it at once, without retrying."""

    def __init__(self, reason: str = "rejected") -> None:
        super().__init__(reason)
        self.reason = reason
