"""Queues and single tasks: counts, peeking, one task's story, cancel, pause/resume."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from .. import codec
from ..brokers.base import DeadLetter as BrokerDeadLetter
from ..brokers.base import Waiting
from ..errors import BrokerError, ConfigError, NotFound, PayloadError
from ..options import check_task_id
from ..results.base import TaskInfo as RecordInfo
from ._context import Context, to_datetime
from .types import QueueInfo, TaskInfo

__all__ = ["STATES", "cancel", "peek", "queues", "set_paused", "task"]

STATES = ("ready", "scheduled", "running", "dead")
_WHERE = {
    "queued": "ready",
    "scheduled": "scheduled",
    "retrying": "scheduled",
    "running": "running",
}


async def queues(ctx: Context) -> list[QueueInfo]:
    """Every known queue with its counts and pause flag."""
    broker = await ctx.broker()
    names = await ctx.queue_names()
    depths = await broker.depths(names)
    paused = await broker.paused_of(names)
    return [
        QueueInfo(
            name,
            int(d["ready"]),
            int(d["scheduled"]),
            int(d["inflight"]),
            int(d["dead"]),
            name in paused,
        )
        for name, d in zip(names, depths, strict=True)
    ]


async def peek(ctx: Context, queue: str, state: str, limit: int, offset: int) -> list[TaskInfo]:
    """A window of ``queue``'s tasks in ``state``, merged with their records."""
    if state not in STATES:
        raise ConfigError(f"state must be one of {', '.join(STATES)}, got {state!r}")
    if limit < 0 or offset < 0:
        raise ConfigError(f"limit and offset must not be negative, got {limit} and {offset}")
    broker = await ctx.check(queue)
    if limit == 0:
        return []
    found: list[Waiting | BrokerDeadLetter]
    if state == "dead":
        found = await _dead_window(ctx, queue, offset, limit)
    else:
        found = list(await broker.browse(queue, state, offset, limit))
    records = await ctx.kernel.results.get_many([m.id for m in found])
    return [_info(m, state, r) for m, r in zip(found, records, strict=True)]


async def _dead_window(ctx: Context, queue: str, offset: int, limit: int) -> list[Any]:
    broker = await ctx.broker()
    out: list[BrokerDeadLetter] = []
    skip = offset
    pos: int | None = 0
    while pos is not None and len(out) < limit:
        page, pos = await broker.dead_page(queue, pos, min(1000, skip + limit))
        letters = [d for _, d in page]
        out += letters[skip:]
        skip = max(0, skip - len(letters))
    return out[:limit]


def _info(
    msg: Waiting | BrokerDeadLetter, state: str, record: Mapping[str, Any] | None
) -> TaskInfo:
    """A task from its message (name, priority, eta, attempt) and its record, if any."""
    name, attempt, eta = "", 0, getattr(msg, "eta", None)
    try:
        env = codec.decode_envelope(msg.body)
        name, attempt = env.task, env.attempt
        eta = eta if eta is not None else env.eta
    except PayloadError:
        pass
    priority = msg.priority if isinstance(msg, Waiting) else int(msg.extra.get("priority", 0))
    if record is None:
        return TaskInfo(
            msg.id, name, msg.queue, state, None, priority, to_datetime(eta), attempt,
            None, None, None, None, None,
        )  # fmt: skip
    rec = RecordInfo.from_record(record)
    return _from_record(
        rec,
        task_id=msg.id,
        name=name or rec.name,
        queue=msg.queue,
        state=state,
        priority=priority,
        eta=to_datetime(eta) if state == "scheduled" else None,
        attempts=rec.attempts or attempt,
    )


def _from_record(
    rec: RecordInfo,
    *,
    task_id: str,
    name: str,
    queue: str,
    state: str,
    priority: int,
    eta: datetime | None,
    attempts: int,
) -> TaskInfo:
    """A task's info: where it is (``state``, from its message or its record) and what
    its record says."""
    return TaskInfo(
        id=task_id,
        task=name,
        queue=queue,
        state=state,
        status=rec.status.value,
        priority=priority,
        eta=eta,
        attempts=attempts,
        error=rec.error,
        created_at=rec.created_at,
        started_at=rec.started_at,
        finished_at=rec.finished_at,
        worker=rec.worker,
        history=rec.history,
    )


async def task(ctx: Context, task_id: str) -> TaskInfo:
    """One task's record (and where its message is): NotFound without a record."""
    task_id = check_task_id(task_id, "admin.task")
    await ctx.kernel.connect()
    record = await ctx.kernel.results.get(task_id)
    if record is None:
        raise NotFound(f"task {task_id!r} not found")
    rec = RecordInfo.from_record(record)
    state = _WHERE.get(rec.status.value, rec.status.value)
    if rec.status.value == "failed" and rec.queue:
        broker = await ctx.broker()
        if await broker.dead_by_ids(rec.queue, [task_id]):
            state = "dead"
    return _from_record(
        rec,
        task_id=rec.id,
        name=rec.name,
        queue=rec.queue,
        state=state,
        priority=rec.priority,
        eta=None,
        attempts=rec.attempts,
    )


async def cancel(ctx: Context, task_id: str) -> bool:
    """Cancel a queued or running task (NotFound for an id without a record)."""
    task_id = check_task_id(task_id, "admin.cancel")
    await ctx.kernel.connect()
    record = await ctx.kernel.results.get(task_id)
    if record is None:
        raise NotFound(f"task {task_id!r} not found")
    done = await ctx.kernel.enqueuer.cancel(task_id)
    if done:
        await ctx.record("cancel", str(record.get("queue") or "*"), [task_id])
    return done


async def set_paused(ctx: Context, queue: str, paused: bool) -> None:
    """Pause or resume ``queue`` (audited)."""
    broker = await ctx.check(queue)
    if paused:
        await broker.pause(queue)
    else:
        await broker.resume(queue)
    await ctx.record("pause" if paused else "resume", queue, [], count=0)


async def reveal(ctx: Context, task_id: str) -> dict[str, Any]:
    """The arguments of a dead-lettered task, for an operator who asked (audited).

    Only a dead letter's message can be read back: a queued or running task's message is
    the broker's to deliver, and a finished task's arguments are not kept.
    """
    task_id = check_task_id(task_id, "admin.reveal")
    await ctx.kernel.connect()
    record = await ctx.kernel.results.get(task_id)
    if record is None:
        raise NotFound(f"task {task_id!r} not found")
    queue = RecordInfo.from_record(record).queue
    broker = await ctx.broker()
    letters = await broker.dead_by_ids(queue, [task_id]) if queue else []
    if not letters:
        raise NotFound(
            f"task {task_id!r} is not a dead letter: only a dead letter's arguments are kept"
        )
    try:
        env = codec.decode_envelope(letters[0].body)
    except PayloadError:
        raise PayloadError(f"the message of task {task_id!r} cannot be decoded") from None
    try:
        # Arguments are shown only once their showing is audited.
        await ctx.record("reveal", queue, [task_id], before=True)
    except BrokerError as exc:
        raise BrokerError(
            f"the arguments of task {task_id!r} are not shown: showing them is audited, and "
            f"the result store refused the audit entry: {exc}"
        ) from exc
    return {"id": task_id, "task": env.task, "args": list(env.args), "kwargs": dict(env.kwargs)}
