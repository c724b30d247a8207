"""Canvas records in the result store, and the group counter written once over its primitives.

Records (all with the app's ``result_ttl``; ``status`` is a :class:`TaskStatus` value, so a
record is terminal exactly when a task record would be, and ``results.wait`` works on it):

* chain ``<chain id>``: ``kind="chain"``, ``size``, ``steps`` (``{"id", "k", "name"}`` per
  step), ``current`` (index of the step that runs now), ``s.<i>`` (final status of step
  ``i``), and once terminal ``result`` (the last value, typed) or ``error`` + ``failed_task``.
* group ``<group id>``: ``kind="group"``, ``size``, ``members`` (descriptors), ``status``.
* slot ``<group id>:<i>``: member ``i``'s final ``status``, ``task`` id, typed ``result`` or
  ``error``. A slot is written terminal, so the first write wins and a repeat is a no-op.

A *typed value* is ``{"n": task name, "v": wire value}`` or ``{"g": [typed values]}``: the
wire form plus what decodes it, so a value crosses the canvas without losing its type.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..kernel import Kernel, TaskRegistry
from ..message import TaskStatus
from ..payload import decode_any
from ..results.base import is_terminal

__all__ = [
    "GroupCounter",
    "chain_record",
    "decode_typed",
    "descriptor",
    "group_record",
    "slot_id",
]

SUCCEEDED = TaskStatus.SUCCEEDED.value


def descriptor(spec: Mapping[str, Any]) -> dict[str, Any]:
    """What a parent record keeps about a child node."""
    out = {"id": spec["id"], "k": spec["k"]}
    if spec["k"] == "t":
        out["name"] = spec["name"]
    return out


def chain_record(
    cid: str, steps: Sequence[Mapping[str, Any]], now: float, root: bool, *, chord: bool = False
) -> dict[str, Any]:
    """A new chain's record (``chord``: it is ``chain(group, body...)`` built by chord)."""
    return {
        "id": cid,
        "kind": "chain",
        "name": "chord" if chord else "chain",
        "chord": chord,
        "status": (TaskStatus.RUNNING if root else TaskStatus.PENDING).value,
        "size": len(steps),
        "steps": [descriptor(s) for s in steps],
        "current": 0,
        "created_at": now,
    }


def group_record(
    gid: str, members: Sequence[Mapping[str, Any]], now: float, root: bool
) -> dict[str, Any]:
    """A new group's record."""
    return {
        "id": gid,
        "kind": "group",
        "name": "group",
        "status": (TaskStatus.RUNNING if root else TaskStatus.PENDING).value,
        "size": len(members),
        "members": [descriptor(m) for m in members],
        "created_at": now,
    }


def slot_id(gid: str, index: int) -> str:
    """The record id of member ``index``'s slot in group ``gid``."""
    return f"{gid}:{index}"


def decode_typed(registry: TaskRegistry, value: Any) -> Any:
    """A typed value back to Python, with each producing task's return annotation."""
    if not isinstance(value, dict):
        return decode_any(value)
    if "g" in value:
        return [decode_typed(registry, v) for v in value["g"]]
    task = registry.get(str(value.get("n") or ""))
    if task is None:
        return decode_any(value.get("v"))
    return task.schema.decode_result(value.get("v"))


class GroupCounter:
    """Counts finished members of one group and elects one completer.

    Each member (its worker, after the member's record is durable) calls :meth:`finish`:

    1. write its slot terminal -- the first write wins, a repeat returns "already set";
    2. ``incr`` the counter;
    3. if the counter reached the size, or the slot was already set (a redelivery after a
       crash between 1 and 2, whose increment may be missing), read every slot with one
       ``get_many``. Only when all are terminal may the group complete, so counting a
       redelivered member twice can never complete a group early;
    4. the completer claims ``complete`` with ``set_nx``, naming itself. The claimant, or a
       redelivery of that same member, advances what follows; everyone else stops there.
       The follow-up is therefore driven by one member's message, which is acked only after
       it is done: a crash before that redelivers exactly that member, which finishes it.
    """

    def __init__(self, kernel: Kernel, gid: str, size: int) -> None:
        self.kernel = kernel
        self.gid = gid
        self.size = size
        self.ttl = kernel.settings.result_ttl

    async def finish(self, index: int, slot: dict[str, Any], owner: str) -> list[Any] | None:
        """Record member ``index``; the slots of a complete group if ``owner`` completes it."""
        results = self.kernel.results
        first = await results.update(slot_id(self.gid, index), slot, self.ttl) is not None
        done = await results.incr(f"canvas:{self.gid}:done", 1, self.ttl)
        if done < self.size and first:
            return None
        slots = await results.get_many([slot_id(self.gid, i) for i in range(self.size)])
        if not all(is_terminal(s) for s in slots):
            return None
        claimed = await results.set_nx(f"canvas:{self.gid}:complete", owner, self.ttl)
        if claimed is not None and claimed != owner:
            return None
        return [dict(s) for s in slots if s is not None]
