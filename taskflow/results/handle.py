"""``AsyncResult[R]``: a handle on one task's outcome.

Every read goes through the kernel's :meth:`~taskflow.kernel.Kernel.lookup`, which connects
on first use: any process may look a task up by id before it has sent anything.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Generic, TypeVar

from ..context import current_task
from ..errors import (
    ConfigError,
    NotFound,
    PayloadError,
    ResultTimeout,
    TaskCancelled,
    TaskFailed,
)
from ..kernel import Kernel
from ..message import TaskStatus
from ..payload import decode_any
from .base import TaskInfo, is_terminal

__all__ = ["AsyncResult", "failure"]

R = TypeVar("R")


class AsyncResult(Generic[R]):
    """The outcome of one task, looked up in the app's result store."""

    __slots__ = ("_kernel", "_name", "id")

    def __init__(self, kernel: Kernel, task_id: str, task_name: str | None = None) -> None:
        self._kernel = kernel
        self.id = task_id
        self._name = task_name

    def __repr__(self) -> str:
        return f"<AsyncResult {self._name or '?'}[{self.id}]>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AsyncResult) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    # -- state -----------------------------------------------------------------------
    def _record(self) -> dict[str, Any] | None:
        return self._kernel.lookup(lambda: self._kernel.results.get(self.id))

    @property
    def status(self) -> TaskStatus:
        """The current status (``pending`` if nothing is known yet)."""
        record = self._record()
        return TaskStatus(record["status"]) if record else TaskStatus.PENDING

    def ready(self) -> bool:
        """True once the status is terminal."""
        return self.status.terminal

    def successful(self) -> bool:
        """True if the task succeeded."""
        return self.status is TaskStatus.SUCCEEDED

    def failed(self) -> bool:
        """True if the task failed."""
        return self.status is TaskStatus.FAILED

    def info(self) -> TaskInfo:
        """A snapshot of the task's record; raises NotFound if there is none."""
        record = self._record()
        if record is None:
            raise NotFound(f"no record for task {self.id}")
        value = None
        if record.get("status") == TaskStatus.SUCCEEDED.value:
            value = self._decode(record)
        return TaskInfo.from_record(record, value)

    # -- waiting ---------------------------------------------------------------------
    def get(self, timeout: float | None = None, *, propagate: bool = True) -> R:
        """Wait for the outcome and return the value.

        Raises :class:`TaskFailed` (if ``propagate``), :class:`TaskCancelled`, or
        :class:`ResultTimeout` when ``timeout`` seconds pass first; :class:`ConfigError`
        at once for a task this process declares ``store_result=False``, whose outcome
        no wait could see.
        """
        self._check_stored()
        record = self._kernel.wait_result(self.id, timeout)
        return self._outcome(record, timeout, propagate)

    async def aget(self, timeout: float | None = None, *, propagate: bool = True) -> R:
        """``get`` for async code."""
        self._check_stored()
        kernel = self._kernel
        record = await kernel.alookup(lambda: kernel.await_result(self.id, timeout))
        return self._outcome(record, timeout, propagate)

    def _check_stored(self) -> None:
        # Its worker writes no record, so a wait would end only at its timeout (or never).
        if self._kernel.registry.unstored(self._name):
            raise ConfigError(
                f"{self._name}[{self.id}] is declared store_result=False: its outcome is not "
                "stored, so get() has nothing to wait for (declare the task without "
                "store_result=False to read its result)"
            )

    def _outcome(
        self, record: Mapping[str, Any] | None, timeout: float | None, propagate: bool
    ) -> R:
        if record is None:
            raise ResultTimeout(f"task {self.id} did not finish within {timeout}s{_inside()}")
        status = record.get("status")
        if status == TaskStatus.SUCCEEDED.value:
            return self._decode(record)  # type: ignore[no-any-return]
        return failure(self.id, record, propagate)  # type: ignore[no-any-return]

    def _decode(self, record: Mapping[str, Any]) -> Any:
        task = self._kernel.registry.get(str(record.get("name") or self._name or ""))
        raw = record.get("result")
        if task is None:
            return decode_any(raw)
        try:
            return task.schema.decode_result(raw)
        except PayloadError:
            raise
        except (TypeError, ValueError) as exc:
            raise PayloadError(f"{task.name}(return): {exc}") from None

    # -- actions ---------------------------------------------------------------------
    def cancel(self) -> bool:
        """Cancel: True if the task was found and will not run / is being stopped."""
        return bool(self._kernel.call(self._kernel.cancel(self.id)))

    def forget(self) -> None:
        """Delete the stored record of a finished task (nothing to do without one).
        ``ConfigError`` for a task that has not finished: its worker would write the
        record again as it runs it, and ``cancel()`` is what stops it."""
        self._kernel.lookup(self._forget)

    async def _forget(self) -> None:
        results = self._kernel.results
        record = await results.get(self.id)
        if record is None:
            return
        if not is_terminal(record):
            raise ConfigError(
                f"task {self.id} is {record.get('status')}: forget() deletes the record of "
                "a finished task (its worker would write it again); cancel() it first"
            )
        await results.delete(self.id)


def failure(task_id: str, record: Mapping[str, Any], propagate: bool) -> Any:
    """The exception a terminal record that did not succeed stands for: raised, or (with
    ``propagate=False``) returned when it is a :class:`TaskFailed`."""
    status = record.get("status")
    if status == TaskStatus.EXPIRED.value:
        raise TaskCancelled(task_id, "expired")
    if status == TaskStatus.CANCELLED.value:
        reason = record.get("reason")
        raise TaskCancelled(task_id, f"cancelled ({reason})" if reason else "cancelled")
    error = record.get("error") or {}
    exc = TaskFailed(
        task_id,
        str(error.get("type", "Exception")),
        str(error.get("message", "")),
        error.get("traceback"),
    )
    if propagate:
        raise exc
    return exc


def _inside() -> str:
    """What a wait that timed out inside a running task should add to its message."""
    ctx = current_task()
    if ctx is None:
        return ""
    return (
        f" (waited inside task {ctx.name}[{ctx.id}], which holds its worker slot while it "
        "waits: when every slot that could run the task waited on is held so, it cannot "
        "start; see 'Waiting inside a task holds its slot' in docs/guide.md)"
    )
