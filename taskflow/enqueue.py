"""Putting prepared sends on the broker, and taking work back off it.

:func:`enqueue` is ``App._enqueue``: enqueue middleware, idempotency keys, queued records,
publish, ``queued`` hooks -- all or nothing for one call. :func:`cancel` is ``App._cancel``.
Both run on the App's loop. A failed send is rolled back through ``App._undo_enqueue``, one
seam that a test can replace to play a producer that dies before cleaning up.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from . import codec
from .brokers.base import Message
from .errors import IdempotencyConflict, TaskflowError
from .message import Envelope, TaskStatus
from .results.base import is_terminal
from .sending import Prepared, message_for, queued_event, queued_record

if TYPE_CHECKING:
    from .app import App

__all__ = ["cancel", "enqueue", "enqueue_blocking", "undo_enqueue"]

log = logging.getLogger("taskflow.app")


async def enqueue(app: App, prepared: list[Prepared]) -> list[str]:
    """Record, publish and announce; all or nothing for one call."""
    await app._connect()
    envs = [app._enqueue_chain(p.envelope) for p in prepared]
    for env in envs:
        await app._declare(env.queue)
    ids, fresh = await _resolve_idempotency(app, prepared, envs)
    if not fresh:
        return ids
    records = [(envs[i].id, queued_record(envs[i])) for i in fresh if prepared[i].store_result]
    messages = [message_for(envs[i], app) for i in fresh]
    fresh_envs = [envs[i] for i in fresh]
    if (
        records
        and app.results.capabilities.atomic_create
        and not any(prepared[i].explicit_id for i in fresh)
    ):
        # Generated ids are new, and a create never overwrites a worker's update:
        # write the queued records and publish in parallel (one round trip of latency).
        await _record_and_publish(app, fresh_envs, records, messages)
    else:
        if records:
            await _create_records(app, fresh_envs, records)
        try:
            await app.broker.publish(messages)
        except BaseException:
            await app._undo_enqueue(fresh_envs, records)
            raise
    if app.hooks["queued"]:
        for i in fresh:
            await app._run_hooks("queued", queued_event(envs[i]), None)
    return ids


def enqueue_blocking(app: App, prepared: list[Prepared]) -> list[str] | None:
    """:func:`enqueue` in the calling thread, without a hop onto the App's loop.

    Taken when nothing in the call needs the loop: a connected broker that publishes from
    any thread, no idempotency keys or caller-chosen ids, no ``queued`` hooks, and records
    (if any) that the store can create from any thread. None: use :func:`enqueue`.
    """
    if (
        not app._connected
        or not app.broker.capabilities.blocking_publish
        or app.hooks["queued"]
        or app._runtime.in_loop_thread()
        or any(p.envelope.idempotency_key is not None or p.explicit_id for p in prepared)
    ):
        return None
    if not app.results.capabilities.blocking and any(p.store_result for p in prepared):
        return None
    envs = [app._enqueue_chain(p.envelope) for p in prepared]
    for queue in {env.queue for env in envs} - app._declared:
        app._call(app._declare(queue))
    records = [
        (e.id, queued_record(e)) for e, p in zip(envs, prepared, strict=True) if p.store_result
    ]
    if records:
        app.results.create_many_blocking(records, None)
    try:
        app.broker.publish_blocking([message_for(env, app) for env in envs])
    except BaseException:
        app._call(app._undo_enqueue(envs, records))
        raise
    return [env.id for env in envs]


async def _resolve_idempotency(
    app: App, prepared: list[Prepared], envs: list[Envelope]
) -> tuple[list[str], list[int]]:
    ids = [env.id for env in envs]
    fresh: list[int] = []
    for i, (p, env) in enumerate(zip(prepared, envs, strict=True)):
        if env.idempotency_key is None:
            fresh.append(i)
            continue
        key = f"idem:{env.idempotency_key}"
        value = codec.dumps({"id": env.id, "digest": p.digest}).decode()
        existing = await app.results.set_nx(key, value, app.result_ttl)
        if existing is None:
            fresh.append(i)
            continue
        known = codec.loads(existing)
        if known.get("digest") != p.digest:
            raise IdempotencyConflict(
                f"{env.task}: idempotency key {env.idempotency_key!r} was used for "
                f"task {known.get('id')} with different arguments"
            )
        ids[i] = str(known["id"])
    return ids, fresh


async def _record_and_publish(
    app: App,
    envs: list[Envelope],
    records: list[tuple[str, dict[str, Any]]],
    messages: list[Message],
) -> None:
    created, published = await asyncio.gather(
        app.results.create_many(records, None),
        app.broker.publish(messages),
        return_exceptions=True,
    )
    if isinstance(published, BaseException):
        await app._undo_enqueue(envs, records)
        raise published
    if isinstance(created, BaseException):
        # The messages are out; the worker's own updates will create the records.
        log.warning("queued records not written (%s); the tasks were published", created)


async def _create_records(
    app: App, envs: list[Envelope], records: list[tuple[str, dict[str, Any]]]
) -> None:
    written = await app.results.create_many(records, None)
    taken = [tid for (tid, _), ok in zip(records, written, strict=True) if not ok]
    if taken:
        await app._undo_enqueue(envs, [r for r, ok in zip(records, written, strict=True) if ok])
        raise TaskflowError(
            f"task id(s) already in use: {', '.join(taken[:5])}; a task id names one task "
            "for good (use idempotency_key to deduplicate sends)"
        )


async def undo_enqueue(
    app: App, envs: list[Envelope], records: list[tuple[str, dict[str, Any]]]
) -> None:
    """Forget the records and idempotency keys of a send that did not go out."""
    for tid, _ in records:
        await app.results.delete(tid)
    for env in envs:
        if env.idempotency_key is not None:
            await app.results.delete_value(f"idem:{env.idempotency_key}")


async def cancel(app: App, task_id: str) -> bool:
    """Cancel queued (never runs) or running (stopped) work."""
    await app._connect()
    record = await app.results.get(task_id)
    if is_terminal(record):
        return False
    if record is None:
        # Never write a "cancelled" record for an id nobody enqueued; workers still hear
        # about it (a running fire-and-forget task has no record).
        await app.broker.send_control({"cmd": "cancel", "id": task_id})
        return False
    now = app.clock.time()
    changed = await app.results.update(
        task_id, {"status": TaskStatus.CANCELLED.value, "finished_at": now}, app.result_ttl
    )
    removed = False
    if not record.get("canvas"):
        # A canvas step stays queued: the worker that takes it sees the cancelled
        # record, skips it and advances its canvas (which would otherwise wait forever).
        removed = await app.broker.cancel(task_id, str(record.get("queue", "")))
    await app.broker.send_control({"cmd": "cancel", "id": task_id})
    return changed is not None or removed
