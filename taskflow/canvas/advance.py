"""Advancing canvases: what runs after a step, written once over the result-store primitives.

A task that belongs to a canvas carries ``Envelope.canvas = {"v": 1, "frames": [...]}``: its
continuation, innermost first. A frame is

* ``{"k": "c", "id": chain id, "i": step index, "rest": [specs of the later steps]}``, or
* ``{"k": "g", "id": group id, "i": member index, "n": group size}``.

:class:`CanvasContinuation` is registered on the kernel by ``App``; the worker runs it after
the step's record is durable and *before* it acks the message. Everything here is
idempotent, so a worker that dies anywhere in between only causes a redelivery that advances
again with the same outcome (re-read from the stored record): records merge the same
fields, terminal records never change, group slots are first-write-wins, and next steps are
published with their pre-assigned ids plus an idempotency key (``canvas:<task id>``), which
the kernel's enqueuer deduplicates.

The envelope's ``canvas`` may also carry callbacks, ``"link"`` and ``"link_error"`` (entries
of :mod:`.compile`): once the task succeeded, each ``link`` entry is started with its result
as the parent value; once it failed for good (not on a retry, never for a cancelled or
expired task), each ``link_error`` entry with the failed task's id. They are started like a
chain's next step -- pre-assigned ids, the same idempotency keys, the records of a callback
canvas created only where absent -- so each is sent exactly once per outcome, also when the
worker dies between the task's result and the send.

Lineage: a node started here gets ``parent_id`` = the task that finished (or, when a producer
applies a canvas, the task it runs in, if any) and ``root_id`` = that task's root.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from typing import Any

from ..errors import BrokerError, IdempotencyConflict, PayloadError, TaskflowError
from ..kernel import Kernel, Prepared
from ..message import Envelope, TaskStatus, error_info
from ..payload import decode_any
from ..results.base import is_terminal
from .state import SUCCEEDED, GroupCounter, decode_typed

__all__ = ["Advancer", "CanvasContinuation", "apply_spec"]

log = logging.getLogger("taskflow.canvas")

CANCELLED = TaskStatus.CANCELLED.value
FAILED = TaskStatus.FAILED.value
_NO_PREV: dict[str, Any] = {}  # sentinel: the first step of a canvas gets no parent value

Outcome = dict[str, Any]


def ok(task_id: str, value: Any) -> Outcome:
    """A successful outcome carrying a typed value."""
    return {"ok": True, "task": task_id, "value": value}


def fail(task_id: str, status: str, error: Mapping[str, Any] | None) -> Outcome:
    """A failed (or cancelled/expired) outcome of ``task_id``."""
    return {
        "ok": False,
        "task": task_id,
        "status": status,
        "error": dict(error or {"type": "TaskCancelled", "message": status}),
    }


def _outcome_of(record: Mapping[str, Any], own_id: str) -> Outcome:
    """The outcome a terminal chain/group record stands for."""
    if record.get("status") == SUCCEEDED:
        return ok(own_id, record.get("result"))
    return fail(
        str(record.get("failed_task") or own_id), str(record.get("status")), record.get("error")
    )


def _walk(spec: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    yield spec
    for child in spec.get("steps") or spec.get("members") or ():
        yield from _walk(child)


class _Batch:
    """Writes and publishes collected while starting nodes, flushed in few round trips."""

    def __init__(self) -> None:
        self.updates: list[tuple[str, dict[str, Any]]] = []
        self.prepared: list[Prepared] = []
        self.broken: list[tuple[Mapping[str, Any], list[Any], dict[str, str]]] = []
        # The spec and frames of each prepared step, by task id: a step the broker
        # refuses (too large for it) is failed with them, as a step that cannot be sent.
        self.sources: dict[str, tuple[Mapping[str, Any], list[Any]]] = {}


class Advancer:
    """Advances canvas frames for one finished step (``owner``: that step's task id)."""

    def __init__(
        self,
        kernel: Kernel,
        owner: str,
        *,
        keyed: bool,
        replay: bool,
        root_id: str,
        parent_id: str | None,
    ) -> None:
        self.kernel = kernel
        self.owner = owner
        self.keyed = keyed
        self.replay = replay
        self.root_id = root_id
        self.parent_id = parent_id  # of every task this advancer sends
        self.ttl = kernel.settings.result_ttl

    # -- starting nodes ---------------------------------------------------------------
    async def start(
        self,
        spec: Mapping[str, Any],
        prev: Any,
        frames: list[Any],
        batch: _Batch,
    ) -> None:
        """Start ``spec`` with the parent value ``prev`` (``_NO_PREV``: none)."""
        kind = spec["k"]
        if kind == "t":
            self._send(spec, prev, frames, batch)
            return
        now = self.kernel.clock.time()
        batch.updates.append((spec["id"], {"status": TaskStatus.RUNNING.value, "started_at": now}))
        if kind == "c":
            steps = spec["steps"]
            frame = {"k": "c", "id": spec["id"], "i": 0, "rest": steps[1:]}
            await self.start(steps[0], prev, [frame, *frames], batch)
            return
        members = spec["members"]
        if not members:  # an empty group is done at once, with no values
            batch.updates.append((spec["id"], {"status": SUCCEEDED, "finished_at": now}))
            await self.advance(frames, ok(spec["id"], {"g": []}))
            return
        for index, member in enumerate(members):
            frame = {"k": "g", "id": spec["id"], "i": index, "n": len(members)}
            await self.start(member, prev, [frame, *frames], batch)

    def _send(
        self,
        spec: Mapping[str, Any],
        prev: Any,
        frames: list[Any],
        batch: _Batch,
    ) -> None:
        name = str(spec["name"])
        args = [decode_any(a) for a in spec["args"]]
        opts: dict[str, Any] = decode_any(spec["opts"])
        opts.update(task_id=spec["id"], root_id=self.root_id, parent_id=self.parent_id)
        if frames or spec.get("cb"):
            opts["canvas"] = {"v": 1, "frames": frames, **(spec.get("cb") or {})}
        if self.keyed and "idempotency_key" not in opts:
            opts["idempotency_key"] = f"canvas:{spec['id']}"
        try:
            if prev is not _NO_PREV and not spec["im"]:
                args.insert(0, decode_typed(self.kernel.registry, prev))
            kwargs = {k: decode_any(v) for k, v in spec["kwargs"].items()}
            prepared = self.kernel.prepare(name, args, kwargs, opts)
        except (PayloadError, ValueError, TypeError) as exc:
            # The step cannot even be sent (its parent's value does not fit its
            # parameters): it fails like a task would, and its canvas with it.
            batch.broken.append((spec, frames, error_info(exc)))
            return
        batch.prepared.append(prepared)
        batch.sources[prepared.envelope.id] = (spec, frames)

    async def flush(self, batch: _Batch) -> None:
        """Write the batch's records, publish its tasks, fail the steps that could not go."""
        if batch.updates:
            await self.kernel.results.update_many(batch.updates, self.ttl)
        if batch.prepared:
            for item, exc in await self._publish(batch.prepared):
                spec, frames = batch.sources[item.envelope.id]
                batch.broken.append((spec, frames, error_info(exc)))
        for spec, frames, error in batch.broken:
            await self.kernel.results.update(
                spec["id"],
                {
                    "status": FAILED,
                    "name": spec["name"],
                    "error": error,
                    "finished_at": self.kernel.clock.time(),
                },
                self.ttl,
            )
            await self.advance(frames, fail(spec["id"], FAILED, error))

    async def _publish(self, prepared: list[Prepared]) -> list[tuple[Prepared, PayloadError]]:
        """Publish the steps; those the broker refuses for their size, with its error (they
        are not sent, and never would be: the caller fails them)."""
        enqueuer = self.kernel.enqueuer
        refused: list[tuple[Prepared, PayloadError]] = []
        try:
            await enqueuer.enqueue(prepared)
        except BrokerError:
            raise  # an outage: the worker retries the whole continuation
        except TaskflowError:
            # An IdempotencyConflict: only a replay recomputes a step's arguments; a task
            # that stores no result may have returned something else the second time. The
            # first publish stands. A taken id: the step was cancelled (its canvas's
            # cancel() marked it) between this advance and its send; it stays unsent. A
            # PayloadError: a step too large for the broker (a chord's callback with all
            # the results); the others go.
            for item in prepared:
                error = await self._publish_one(item)
                if error is not None:
                    refused.append((item, error))
        if self.replay:
            unsent = {item.envelope.id for item, _ in refused}
            await self._republish_missing([p for p in prepared if p.envelope.id not in unsent])
        return refused

    async def _publish_one(self, item: Prepared) -> PayloadError | None:
        """Publish one step; the PayloadError of a step the broker refuses for its size."""
        try:
            await self.kernel.enqueuer.enqueue([item])
        except IdempotencyConflict as exc:
            log.warning("canvas step %s was already sent (%s)", item.envelope.id, exc)
        except BrokerError:
            raise
        except PayloadError as exc:
            return exc
        except TaskflowError:
            if not is_terminal(await self.kernel.results.get(item.envelope.id)):
                raise
            log.info("canvas step %s was cancelled before it was sent", item.envelope.id)
        return None

    async def _republish_missing(self, prepared: list[Prepared]) -> None:
        """After a crash between claiming a step's idempotency key and writing its record,
        the key alone would hide a step that was never sent: send those again."""
        stored = [p for p in prepared if p.store_result]
        if not stored:
            return
        results = self.kernel.results
        records = await results.get_many([p.envelope.id for p in stored])
        for item, record in zip(stored, records, strict=True):
            key = item.envelope.idempotency_key
            if record is None and key is not None:
                log.warning(
                    "canvas step %s was claimed but never sent; sending it", item.envelope.id
                )
                await results.delete_value(f"idem:{key}")
                await self.kernel.enqueuer.enqueue([item])

    # -- callbacks ---------------------------------------------------------------------
    async def callbacks(self, canvas: Mapping[str, Any], outcome: Outcome) -> None:
        """Send the ``link`` entries of a success (with its value) or the ``link_error``
        entries of a failure (with the failed task's id); nothing for other outcomes."""
        if outcome["ok"]:
            entries, prev = canvas.get("link") or (), outcome["value"]
        elif outcome["status"] == FAILED:
            entries, prev = canvas.get("link_error") or (), self.owner
        else:
            return
        if not entries:
            return
        records = [(str(rid), rec) for entry in entries for rid, rec in entry["records"]]
        if records:
            # Only where absent: a redelivery must not reset a callback canvas in progress.
            await self.kernel.results.create_many(records, self.ttl)
        batch = _Batch()
        for entry in entries:
            await self.start(entry["spec"], prev, [], batch)
        await self.flush(batch)

    # -- advancing frames -------------------------------------------------------------
    async def advance(self, frames: list[Any], outcome: Outcome) -> None:
        """Hand ``outcome`` to the innermost frame; it passes it further up when done."""
        if not frames:
            return
        frame, parent = frames[0], list(frames[1:])
        if frame["k"] == "c":
            await self._chain_step(frame, parent, outcome)
        else:
            await self._group_member(frame, parent, outcome)

    async def _chain_step(
        self, frame: Mapping[str, Any], parent: list[Any], outcome: Outcome
    ) -> None:
        cid, index, rest = str(frame["id"]), int(frame["i"]), list(frame["rest"])
        results, now = self.kernel.results, self.kernel.clock.time()
        if outcome["ok"] and rest:
            record = await results.update(
                cid, {f"s.{index}": SUCCEEDED, "current": index + 1}, self.ttl
            )
            if record is None:  # finished meanwhile (cancelled, or failed elsewhere)
                await self._pass_on(cid, parent)
                return
            batch = _Batch()
            nxt = {"k": "c", "id": cid, "i": index + 1, "rest": rest[1:]}
            await self.start(rest[0], outcome["value"], [nxt, *parent], batch)
            await self.flush(batch)
            return
        if outcome["ok"]:
            changes = {
                f"s.{index}": SUCCEEDED,
                "status": SUCCEEDED,
                "result": outcome["value"],
                "finished_at": now,
            }
        else:
            status = FAILED if outcome["status"] == FAILED else CANCELLED
            changes = {
                f"s.{index}": outcome["status"],
                "status": status,
                "error": outcome["error"],
                "failed_task": outcome["task"],
                "finished_at": now,
            }
            await self._cancel_specs(rest)
        if await results.update(cid, changes, self.ttl) is None:
            await self._pass_on(cid, parent)
            return
        await self.advance(parent, ok(cid, outcome["value"]) if outcome["ok"] else outcome)

    async def _pass_on(self, record_id: str, parent: list[Any]) -> None:
        """A canvas that was already terminal: hand its stored outcome up (idempotent)."""
        if not parent:
            return
        record = await self.kernel.results.get(record_id)
        if is_terminal(record):
            assert record is not None
            await self.advance(parent, _outcome_of(record, record_id))

    async def _cancel_specs(self, specs: list[Any]) -> None:
        """Record every task and canvas in ``specs`` (later chain steps) as cancelled."""
        now = self.kernel.clock.time()
        updates: list[tuple[str, Mapping[str, Any]]] = []
        for spec in specs:
            for node in _walk(spec):
                changes: dict[str, Any] = {"status": CANCELLED, "finished_at": now}
                if node["k"] == "t":
                    changes["name"] = node["name"]
                updates.append((str(node["id"]), changes))
        if updates:
            await self.kernel.results.update_many(updates, self.ttl)

    async def _group_member(
        self, frame: Mapping[str, Any], parent: list[Any], outcome: Outcome
    ) -> None:
        gid, index, size = str(frame["id"]), int(frame["i"]), int(frame["n"])
        slot: dict[str, Any] = {"task": outcome["task"], "finished_at": self.kernel.clock.time()}
        if outcome["ok"]:
            slot.update(status=SUCCEEDED, result=outcome["value"])
        else:
            slot.update(status=outcome["status"], error=outcome["error"])
        slots = await GroupCounter(self.kernel, gid, size).finish(index, slot, self.owner)
        if not outcome["ok"]:
            # Fail fast: what follows the group (a chord body) never runs, and the
            # canvas's result raises this member's error now, not after the others.
            await self.advance(parent, outcome)
        if slots is None:
            return
        bad = next((s for s in slots if s.get("status") != SUCCEEDED), None)
        now = self.kernel.clock.time()
        if bad is not None:
            await self.kernel.results.update(
                gid,
                {
                    "status": FAILED if bad["status"] == FAILED else CANCELLED,
                    "failed_task": bad.get("task"),
                    "error": bad.get("error"),
                    "finished_at": now,
                },
                self.ttl,
            )
            return
        await self.kernel.results.update(gid, {"status": SUCCEEDED, "finished_at": now}, self.ttl)
        await self.advance(parent, ok(gid, {"g": [s.get("result") for s in slots]}))


def _first_task(spec: Mapping[str, Any]) -> str:
    """The id of the task that starts ``spec`` (its own id for an empty group)."""
    while spec["k"] != "t":
        children = spec.get("steps") or spec.get("members")
        if not children:
            break
        spec = children[0]
    return str(spec["id"])


async def apply_spec(
    kernel: Kernel,
    spec: Mapping[str, Any],
    records: list[tuple[str, dict[str, Any]]],
    caller: tuple[str, str] | None = None,
) -> None:
    """Producer side: write the canvas records, then start the root node. ``caller``:
    ``(id, root id)`` of the task this is sent from, the parent of the canvas."""
    await kernel.connect()
    if records:
        await kernel.results.update_many(records, kernel.settings.result_ttl)
    parent_id, root_id = caller if caller is not None else (None, _first_task(spec))
    advancer = Advancer(
        kernel,
        f"apply:{spec['id']}",
        keyed=False,
        replay=False,
        root_id=root_id,
        parent_id=parent_id,
    )
    batch = _Batch()
    await advancer.start(spec, _NO_PREV, [], batch)
    await advancer.flush(batch)


class CanvasContinuation:
    """Worker side, registered on the kernel: what follows a finished canvas step.

    Called with the step's ``envelope``, ``status`` and ``encoded`` wire result. The stored
    record, when there is one, is the truth: after a crash the redelivered message arrives
    here as cancelled, and the record tells what happened.
    """

    def __init__(self, kernel: Kernel) -> None:
        self.kernel = kernel

    async def __call__(self, envelope: Envelope, status: TaskStatus, encoded: Any) -> None:
        canvas = envelope.canvas or {}
        frames = canvas.get("frames")
        if not (frames or canvas.get("link") or canvas.get("link_error")):
            return
        task = self.kernel.registry.get(envelope.task)
        stores = task is None or task.options.store_result
        record = await self.kernel.results.get(envelope.id) if stores else None
        value = status.value
        if record is not None and is_terminal(record):
            value = str(record["status"])
            if value == SUCCEEDED:
                encoded = record.get("result")
        replay = status is TaskStatus.CANCELLED or value != status.value or not stores
        if value == SUCCEEDED:
            outcome = ok(envelope.id, {"n": envelope.task, "v": encoded})
        else:
            outcome = fail(envelope.id, value, (record or {}).get("error"))
        advancer = Advancer(
            self.kernel,
            envelope.id,
            keyed=True,
            replay=replay,
            root_id=envelope.root_id or envelope.id,
            parent_id=envelope.id,
        )
        if frames:
            await advancer.advance(list(frames), outcome)
        await advancer.callbacks(canvas, outcome)
