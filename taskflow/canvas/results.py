"""Result handles of canvases: :class:`GroupResult`, :class:`ChainResult`, :class:`ChordResult`."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, TypeAlias

from .._waiters import wait_limit
from ..errors import NotFound, ResultTimeout, TaskCancelled
from ..kernel import Kernel
from ..message import TaskStatus
from ..options import check_task_id
from ..results.handle import AsyncResult, failure
from .state import SUCCEEDED, decode_typed, slot_id

__all__ = [
    "ChainResult",
    "ChordResult",
    "GroupResult",
    "ResultHandle",
    "cancel_canvas",
    "chain_result",
    "from_record",
    "group_result",
    "handle_for",
]

CANCELLED = TaskStatus.CANCELLED.value

ResultHandle: TypeAlias = "AsyncResult[Any] | GroupResult | ChainResult"


def _remaining(deadline: float | None) -> float | None:
    if deadline is None:
        return None
    return max(0.0, deadline - time.monotonic())


def _records(kernel: Kernel, ids: list[str]) -> list[dict[str, Any] | None]:
    # A handle may be the first thing an app does (a lookup by id): lookup() connects.
    return kernel.lookup(lambda: _get_many(kernel, ids))


async def _get_many(kernel: Kernel, ids: list[str]) -> list[dict[str, Any] | None]:
    return await kernel.results.get_many(ids) if ids else []


def _record(kernel: Kernel, record_id: str) -> dict[str, Any] | None:
    return _records(kernel, [record_id])[0]


class _CanvasResult:
    """What group and chain handles share: an id, the app's kernel and child handles."""

    kind = ""

    def __init__(self, kernel: Kernel, canvas_id: str, children: list[ResultHandle]) -> None:
        self._kernel = kernel
        self.id = canvas_id
        self.children = children

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.id} ({len(self.children)} parts)>"

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and getattr(other, "id", None) == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    def _own(self) -> dict[str, Any] | None:
        return _record(self._kernel, self.id)

    @property
    def status(self) -> TaskStatus:
        """The canvas's own status (``pending`` while nothing is known)."""
        record = self._own()
        return TaskStatus(record["status"]) if record else TaskStatus.PENDING

    def ready(self) -> bool:
        """True once the canvas reached a terminal status."""
        return self.status.terminal

    def successful(self) -> bool:
        """True if the canvas succeeded."""
        return self.status is TaskStatus.SUCCEEDED

    def failed(self) -> bool:
        """True if the canvas failed (or was cancelled)."""
        return self.status in (TaskStatus.FAILED, TaskStatus.CANCELLED, TaskStatus.EXPIRED)

    def statuses(self) -> dict[str, TaskStatus]:
        """``{child id: status}`` in submission order (children are tasks or canvases)."""
        ids = [child.id for child in self.children]
        records = _records(self._kernel, ids)
        final = self._final_statuses()
        out: dict[str, TaskStatus] = {}
        for index, (cid, record) in enumerate(zip(ids, records, strict=True)):
            status = final.get(index) or (record or {}).get("status") or "pending"
            out[cid] = TaskStatus(status)
        return out

    def _final_statuses(self) -> dict[int, str]:
        return {}

    def cancel(self) -> int:
        """Cancel every member not finished yet; returns how many tasks this stopped.

        The canvas's record becomes ``cancelled`` first (so a chain sends no further step),
        then each task member is cancelled through the task cancel path: a queued one never
        runs, a running one is stopped, and one not sent yet (a later chain step) is marked
        ``cancelled`` and never sent. Nested groups and chains are cancelled the same way.
        The count is of tasks that were queued, running or not sent yet; finished members
        are left as they are.
        """
        kernel = self._kernel
        return kernel.lookup(lambda: cancel_canvas(kernel, self.id))


class GroupResult(_CanvasResult):
    """The members of a group, in submission order."""

    kind = "group"

    @property
    def results(self) -> list[ResultHandle]:
        """The members' handles, in submission order."""
        return self.children

    def _final_statuses(self) -> dict[int, str]:
        ids = [slot_id(self.id, i) for i in range(len(self.children))]
        slots = _records(self._kernel, ids)
        return {i: str(s["status"]) for i, s in enumerate(slots) if s and s.get("status")}

    def get(self, timeout: float | None = None, *, propagate: bool = True) -> list[Any]:
        """Every member's value, in submission order.

        Waits on each member in turn (push-based). Raises the first failing member's
        :class:`TaskFailed` (``propagate=False`` puts it in the list instead),
        :class:`TaskCancelled`, or :class:`ResultTimeout` when ``timeout`` runs out;
        :class:`ConfigError` when it reaches a member declared ``store_result=False``
        (:meth:`AsyncResult.get`).
        """
        limit = wait_limit(timeout)
        deadline = None if limit is None else time.monotonic() + limit
        values: list[Any] = []
        for child in self.children:
            try:
                values.append(child.get(_remaining(deadline), propagate=propagate))
            except ResultTimeout:
                raise ResultTimeout(f"group {self.id} did not finish within {timeout}s") from None
        return values

    def completed_count(self) -> int:
        """How many members succeeded."""
        return sum(1 for s in self.statuses().values() if s is TaskStatus.SUCCEEDED)


class ChainResult(_CanvasResult):
    """A chain: its steps' handles, the current step, and the final value."""

    kind = "chain"

    @property
    def steps(self) -> list[ResultHandle]:
        """Each step's handle (a task, a group or a chain), in order."""
        return self.children

    @property
    def last(self) -> ResultHandle:
        """The last step's handle."""
        return self.children[-1]

    def _final_statuses(self) -> dict[int, str]:
        record = self._own() or {}
        return {i: str(record[f"s.{i}"]) for i in range(len(self.children)) if record.get(f"s.{i}")}

    @property
    def current(self) -> int | None:
        """Index of the step that runs now (None once the chain finished)."""
        record = self._own()
        if record is None or record.get("status") in (
            "succeeded",
            "failed",
            "cancelled",
            "expired",
        ):
            return None
        return int(record.get("current", 0))

    def finished_steps(self) -> list[ResultHandle]:
        """The handles of the steps that finished, in order."""
        final = self._final_statuses()
        return [c for i, c in enumerate(self.children) if i in final]

    def get(self, timeout: float | None = None, *, propagate: bool = True) -> Any:
        """The last step's value (push-based wait on the chain record).

        Raises the failing step's :class:`TaskFailed` (or returns it with
        ``propagate=False``), :class:`TaskCancelled`, or :class:`ResultTimeout`.
        """
        record = self._kernel.wait_result(self.id, timeout)
        if record is None:
            raise ResultTimeout(f"{self.kind} {self.id} did not finish within {timeout}s")
        return self._outcome(record, propagate)

    async def aget(self, timeout: float | None = None, *, propagate: bool = True) -> Any:
        """``get`` for async code."""
        kernel = self._kernel
        record = await kernel.acall(kernel.await_result(self.id, timeout))
        if record is None:
            raise ResultTimeout(f"{self.kind} {self.id} did not finish within {timeout}s")
        return self._outcome(record, propagate)

    def _outcome(self, record: Mapping[str, Any], propagate: bool) -> Any:
        status = record.get("status")
        if status == SUCCEEDED:
            return decode_typed(self._kernel.registry, record.get("result"))
        failed_task = str(record.get("failed_task") or self.id)
        if status in ("cancelled", "expired"):
            raise TaskCancelled(failed_task, str(status))
        return failure(failed_task, record, propagate)


class ChordResult(ChainResult):
    """A chord: ``header`` (a :class:`GroupResult`) then ``body``; ``get()`` is the body's
    value, or the failing header member's :class:`TaskFailed`."""

    kind = "chord"

    @property
    def header(self) -> GroupResult:
        """The header group's handle."""
        head = self.children[0]
        assert isinstance(head, GroupResult)
        return head

    @property
    def body(self) -> ResultHandle:
        """The body's handle (the last step when the body is a chain)."""
        return self.children[-1]


async def cancel_canvas(kernel: Kernel, canvas_id: str) -> int:
    """Cancel canvas ``canvas_id`` and its unfinished members (see ``cancel``)."""
    results, ttl = kernel.results, kernel.settings.result_ttl
    record = await results.get(canvas_id)
    if record is None:
        return 0
    now = kernel.clock.time()
    await results.update(canvas_id, {"status": CANCELLED, "finished_at": now}, ttl)
    count = 0
    # Last first: the steps not sent yet are marked before the running one is stopped
    # (whose advance would otherwise mark them cancelled itself, uncounted).
    for desc in reversed(record.get("steps") or record.get("members") or ()):
        if desc["k"] != "t":
            count += await cancel_canvas(kernel, str(desc["id"]))
        elif await _cancel_task(kernel, str(desc["id"]), desc.get("name")):
            count += 1
    return count


async def _cancel_task(kernel: Kernel, task_id: str, name: str | None) -> bool:
    if await kernel.cancel(task_id):
        return True
    results = kernel.results
    if await results.get(task_id) is not None:
        return False  # finished already
    # Not sent yet: record it cancelled, so the canvas never sends it (the enqueue of a
    # taken id fails, and the advancer leaves a cancelled step unsent).
    changes = {"id": task_id, "status": CANCELLED, "finished_at": kernel.clock.time()}
    if name:
        changes["name"] = str(name)
    created = await results.create_many([(task_id, changes)], kernel.settings.result_ttl)
    return bool(created and created[0])


def handle_for(kernel: Kernel, desc: Mapping[str, Any]) -> ResultHandle:
    """A handle rebuilt from a stored descriptor (``{"id", "k", "name"}``)."""
    if desc["k"] == "t":
        return AsyncResult(kernel, str(desc["id"]), desc.get("name"))
    record = _record(kernel, str(desc["id"]))
    if record is None:
        raise NotFound(f"no record for canvas {desc['id']}")
    return from_record(kernel, record)


def from_record(kernel: Kernel, record: Mapping[str, Any]) -> GroupResult | ChainResult:
    """A group or chain handle from its stored record."""
    kind = record.get("kind")
    if kind == "group":
        members = [handle_for(kernel, d) for d in record.get("members", [])]
        return GroupResult(kernel, str(record["id"]), members)
    if kind == "chain":
        children = [handle_for(kernel, d) for d in record.get("steps", [])]
        cls = ChordResult if record.get("chord") else ChainResult
        return cls(kernel, str(record["id"]), children)
    raise NotFound(f"record {record.get('id')} is not a canvas (kind {kind!r})")


def group_result(kernel: Kernel, group_id: str) -> GroupResult:
    """``app.group_result``: NotFound if absent or not a group."""
    found = _lookup(kernel, group_id, "group")
    assert isinstance(found, GroupResult)
    return found


def chain_result(kernel: Kernel, chain_id: str) -> ChainResult:
    """``app.chain_result``: NotFound if absent or not a chain (or chord)."""
    found = _lookup(kernel, chain_id, "chain")
    assert isinstance(found, ChainResult)
    return found


def _lookup(kernel: Kernel, canvas_id: str, kind: str) -> GroupResult | ChainResult:
    canvas_id = check_task_id(canvas_id, f"app.{kind}_result")
    record = _record(kernel, canvas_id)
    if record is None or record.get("kind") != kind:
        raise NotFound(f"no {kind} with id {canvas_id}")
    return from_record(kernel, record)
