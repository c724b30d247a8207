"""``AsyncResult[R]``: a handle on one task's outcome, and how lookups reach the store.

Any process may look a task up by id before it has sent anything (a web handler showing a
task's status), so every read connects the app on first use, as a send does
(:func:`lookup`, :func:`alookup`).
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Mapping
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from ..errors import NotFound, PayloadError, ResultTimeout, TaskCancelled, TaskFailed
from ..message import TaskStatus
from ..payload import decode_any
from .base import TaskInfo

if TYPE_CHECKING:
    from ..app import App

__all__ = ["AsyncResult", "alookup", "lookup", "outcome"]

R = TypeVar("R")
T = TypeVar("T")


async def _connected(app: App, make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    await app._connect()
    return await make()


def lookup(app: App, make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run the read ``make()`` on the app's loop, connecting first if needed.

    An interrupt of the calling thread (Ctrl-C during ``get()``) cancels the read on the
    loop before it propagates, so a process that carries on keeps no stray wait.
    """
    return app._runtime.call(_connected(app, make), cancel_on_interrupt=True)


async def alookup(app: App, make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """:func:`lookup` for async callers."""
    return await app._acall(_connected(app, make))


class AsyncResult(Generic[R]):
    """The outcome of one task, looked up in the app's result store."""

    __slots__ = ("_app", "_name", "id")

    def __init__(self, app: App, task_id: str, task_name: str | None = None) -> None:
        self._app = app
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
        return lookup(self._app, lambda: self._app.results.get(self.id))

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
        :class:`ResultTimeout` when ``timeout`` seconds pass first.
        """
        record = self._app._wait_result(self.id, timeout)
        return self._outcome(record, timeout, propagate)

    async def aget(self, timeout: float | None = None, *, propagate: bool = True) -> R:
        """``get`` for async code."""
        record = await alookup(self._app, lambda: self._app.results.wait(self.id, timeout))
        return self._outcome(record, timeout, propagate)

    def _outcome(
        self, record: Mapping[str, Any] | None, timeout: float | None, propagate: bool
    ) -> R:
        if record is None:
            raise ResultTimeout(f"task {self.id} did not finish within {timeout}s")
        return outcome(self, record, propagate)  # type: ignore[no-any-return]

    def _decode(self, record: Mapping[str, Any]) -> Any:
        task = self._app.registry.get(str(record.get("name") or self._name or ""))
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
        return bool(self._app._call(self._app._cancel(self.id)))

    def forget(self) -> None:
        """Delete the stored record."""
        lookup(self._app, lambda: self._app.results.delete(self.id))


def outcome(result: AsyncResult[Any], record: Mapping[str, Any], propagate: bool) -> Any:
    """Turn a terminal record into a value or the matching exception."""
    status = record.get("status")
    if status == TaskStatus.SUCCEEDED.value:
        return result._decode(record)
    if status == TaskStatus.EXPIRED.value:
        raise TaskCancelled(result.id, "expired")
    if status == TaskStatus.CANCELLED.value:
        reason = record.get("reason")
        raise TaskCancelled(result.id, f"cancelled ({reason})" if reason else "cancelled")
    error = record.get("error") or {}
    exc = TaskFailed(
        result.id,
        str(error.get("type", "Exception")),
        str(error.get("message", "")),
        error.get("traceback"),
    )
    if propagate:
        raise exc
    return exc
