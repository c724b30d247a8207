"""Dead letters: listing (cursor paging), replay, discard, retry; and purge.

Brokers move opaque bodies; what an action means for a task is decided here: a replayed
dead letter is re-encoded as attempt 1 of a new cycle (its record restarted, the earlier
outcome kept in ``history``), a purged message's record is closed as ``cancelled``.
Everything large is walked in pages and acted on in batches, never loaded whole.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from .. import codec
from ..brokers.base import BrokerAdmin, Message, RecordClose, StoppedPartWay
from ..brokers.base import DeadLetter as BrokerDeadLetter
from ..errors import BrokerError, ConfigError, PayloadError
from ..message import TaskStatus
from ..options import name_list
from ..results.base import HISTORY_FIELDS, is_terminal
from ._context import Context, check_limit, decode_cursor, encode_cursor, view
from .types import DeadLetter, Page, ReplayReport

__all__ = ["Filters", "dead_letters", "discard", "purge", "replay", "retry"]

BATCH = 1000
"""Dead letters read, restarted and requeued per round."""
_LISTED = 1000  # ids a report lists
_NEW_CYCLE = {"status": TaskStatus.QUEUED.value, "attempts": 0}
_RETRYABLE = {TaskStatus.FAILED.value, TaskStatus.CANCELLED.value}


@dataclass(frozen=True, slots=True)
class Filters:
    """Which dead letters an action is about (every given filter must match)."""

    ids: frozenset[str] | None = None
    task: str | None = None
    reason: str | None = None
    since: float | None = None

    @classmethod
    def build(
        cls,
        ids: Sequence[str] | None,
        task: str | None,
        reason: str | None,
        since: datetime | float | None,
    ) -> Filters:
        """Check and normalise the filter arguments."""
        when = since.timestamp() if isinstance(since, datetime) else since
        chosen = None if ids is None else frozenset(name_list(ids, "ids"))
        return cls(chosen, task, reason, when)

    def match(self, letter: BrokerDeadLetter, shown: DeadLetter) -> bool:
        """Whether ``letter`` (seen as ``shown``) passes every filter."""
        return (
            (self.ids is None or letter.id in self.ids)
            and (self.task is None or shown.task == self.task)
            and (self.reason is None or letter.reason == self.reason)
            and (self.since is None or letter.failed_at >= self.since)
        )


# -- listing ---------------------------------------------------------------------------
async def dead_letters(
    ctx: Context, queue: str | None, filters: Filters, limit: int, cursor: str | None
) -> Page[DeadLetter]:
    """One page of matching dead letters, oldest first per queue, queues in name order."""
    check_limit(limit)
    broker = await ctx.broker()
    queues = await ctx.scope(queue)
    start_queue, position = (queues[0] if queues else "", 0)
    if cursor is not None:
        start_queue, position = decode_cursor(cursor)
        if start_queue not in queues:
            raise ConfigError(f"cursor {cursor[:40]!r} is not for queue {queue!r}")
    items: list[DeadLetter] = []
    for name in queues[queues.index(start_queue) :] if queues else []:
        pos: int | None = position if name == start_queue else 0
        while pos is not None:
            page, nxt = await broker.dead_page(name, pos, min(BATCH, max(limit, 100)))
            for at, letter in page:
                shown = view(letter)
                if filters.match(letter, shown):
                    items.append(shown)
                    if len(items) == limit:
                        return Page(items, await _after(broker, name, at, nxt, queues))
            pos = nxt
    return Page(items, None)


async def _after(
    broker: BrokerAdmin, queue: str, at: int, nxt: int | None, queues: list[str]
) -> str | None:
    """The cursor just after the item at position ``at`` of ``queue``."""
    if nxt is not None or (await broker.dead_page(queue, at + 1, 1))[0]:
        return encode_cursor(queue, at + 1)
    later = queues[queues.index(queue) + 1 :]
    return encode_cursor(later[0], 0) if later else None


async def _walk(
    broker: BrokerAdmin, queue: str, filters: Filters
) -> AsyncIterator[list[BrokerDeadLetter]]:
    """Batches of matching dead letters of ``queue``. The caller may remove what it got
    before asking for the next batch (positions are adjusted where they shift)."""
    if filters.ids is not None:
        found = await broker.dead_by_ids(queue, sorted(filters.ids))
        found.sort(key=lambda d: d.failed_at)  # oldest first, as a walk would
        chosen = [d for d in found if filters.match(d, view(d))]
        for start in range(0, len(chosen), BATCH):
            yield chosen[start : start + BATCH]
        return
    pos: int | None = 0
    while pos is not None:
        page, nxt = await broker.dead_page(queue, pos, BATCH)
        chosen = [d for _, d in page if filters.match(d, view(d))]
        if chosen:
            yield chosen
        if nxt is not None and broker.dead_positions_shift:
            # Index positions: what the caller removed from this page moves the rest down.
            remaining = await broker.dead_by_ids(queue, [d.id for d in chosen])
            nxt -= len(chosen) - len(remaining)
        pos = nxt


# -- replay ----------------------------------------------------------------------------
async def replay(
    ctx: Context, queue: str | None, filters: Filters, limit: int | None, dry_run: bool
) -> ReplayReport:
    """Run matching dead letters again (see :meth:`Admin.replay`)."""
    broker = await ctx.broker()
    report = _Report()
    progress = Partial(ctx, "replay", queue, "replayed", lambda: (report.done, report.replayed))
    async with progress.unless(dry_run):
        for name in await ctx.scope(queue):
            async for batch in _walk(broker, name, filters):
                if limit is not None:
                    batch = batch[: max(0, limit - report.matched)]
                if not batch:
                    break
                report.matched += len(batch)
                if filters.ids is not None:
                    report.seen.update(d.id for d in batch)
                if dry_run:
                    report.would(batch)
                else:
                    await _replay_batch(ctx, broker, name, batch, report)
            if limit is not None and report.matched >= limit:
                break
    if filters.ids is not None:
        await _explain_missing(ctx, filters.ids, report)
    result = report.build(dry_run)
    if not dry_run and result.replayed:
        await ctx.record("replay", queue or "*", report.done, count=result.replayed)
    return result


async def _explain_missing(ctx: Context, ids: frozenset[str], rep: _Report) -> None:
    """Report each asked-for id that was not a dead letter, with its record's status."""
    missing = sorted(ids - rep.seen)
    records = await ctx.kernel.results.get_many(missing)
    for tid, record in zip(missing, records, strict=True):
        if record is None:
            rep.skip(tid, "not a dead letter (no such task)")
        else:
            rep.skip(tid, f"not a dead letter (its record is {record.get('status')})")


class _Report:
    """A replay or retry under way."""

    def __init__(self) -> None:
        self.matched = 0
        self.replayed = 0
        self.done: list[str] = []
        self.skipped: dict[str, str] = {}
        self.seen: set[str] = set()  # ids matched, tracked when ids were asked for

    def would(self, batch: Sequence[BrokerDeadLetter]) -> None:
        self.replayed += len(batch)
        self.done += [d.id for d in batch][: _LISTED - len(self.done)]

    def skip(self, task_id: str, why: str) -> None:
        if len(self.skipped) < _LISTED:
            self.skipped[task_id] = why

    def build(self, dry_run: bool) -> ReplayReport:
        return ReplayReport(self.matched, self.replayed, self.skipped, dry_run, self.done)


async def _replay_batch(
    ctx: Context, broker: BrokerAdmin, queue: str, batch: Sequence[BrokerDeadLetter], rep: _Report
) -> None:
    """Restart the records of ``batch`` and move its dead letters back, at most once each.

    The record goes back to queued *before* the message is live again: a worker that
    found it still terminal would settle the message without running it.
    """
    results = ctx.kernel.results
    letters = list({d.id: d for d in batch}.values())
    records = await results.get_many([d.id for d in letters])
    todo: list[BrokerDeadLetter] = []
    for letter, record in zip(letters, records, strict=True):
        if record is not None and not is_terminal(record):
            rep.skip(letter.id, f"already {record.get('status')} again (not replayed twice)")
        else:
            todo.append(letter)
    had_record = {d.id for d, r in zip(letters, records, strict=True) if r is not None}
    with_record = [d.id for d in todo if d.id in had_record]
    restarts = await results.restart_many([(tid, _NEW_CYCLE) for tid in with_record])
    restarted = {tid: r for tid, r in zip(with_record, restarts, strict=True) if r is not None}
    lost = [d for d in todo if d.id in had_record and d.id not in restarted]
    for d in lost:  # restarted by a concurrent replay between our read and our restart
        rep.skip(d.id, "replayed by another operator meanwhile")
    sendable = [d for d in todo if d.id not in had_record or d.id in restarted]
    messages = [fresh_message(ctx, d, queue) for d in sendable]
    try:
        moved = set(await broker.requeue(queue, messages)) if messages else set()
    except StoppedPartWay as exc:
        # Those it sent are live tasks again: their restart stays (taken back, a worker
        # would settle them without running them, and their dead letters are gone).
        await _keep_moved(ctx, rep, restarted, sendable, set(exc.done))
        raise
    except BaseException:
        await _keep_moved(ctx, rep, restarted, sendable, set())
        raise
    await _keep_moved(ctx, rep, restarted, sendable, moved)
    for d in sendable:
        if d.id not in moved:
            rep.skip(d.id, "no longer a dead letter (replayed meanwhile or sent again)")


async def _keep_moved(
    ctx: Context,
    rep: _Report,
    restarted: dict[str, dict[str, Any]],
    sendable: Sequence[BrokerDeadLetter],
    moved: set[str],
) -> None:
    """Count the letters of ``sendable`` that ``moved``; take back the restarts of the
    records whose letters did not."""
    undo = [undo_restart(ctx, tid, r) for tid, r in restarted.items() if tid not in moved]
    await asyncio.gather(*undo)
    ids = [d.id for d in sendable if d.id in moved]
    rep.replayed += len(ids)
    rep.done += ids[: max(0, _LISTED - len(rep.done))]


async def undo_restart(ctx: Context, task_id: str, record: dict[str, Any]) -> None:
    """Give a restarted record its earlier outcome back (its message did not move)."""
    history = list(record.get("history") or ())
    if not history:
        return
    last = history.pop()
    changes = {k: last.get(k) for k in HISTORY_FIELDS if last.get(k) is not None}
    await ctx.kernel.results.update(
        task_id, {**changes, "history": history}, ctx.kernel.settings.result_ttl
    )


def fresh_message(ctx: Context, letter: BrokerDeadLetter, queue: str) -> Message:
    """The message that runs a dead letter again: attempt 1, due now, a full budget.

    A body that cannot be decoded goes back unchanged (a worker that learnt to read it
    may run it; any other dead-letters it again).
    """
    try:
        env = codec.decode_envelope(letter.body)
    except PayloadError:
        return Message(
            letter.id,
            queue,
            letter.body,
            int(letter.extra.get("priority", 0)),
            None,
            int(letter.extra.get("max_deliveries", 1)),
        )
    msg = ctx.kernel.enqueuer.message(env.replace(attempt=1, eta=None))
    return dataclasses.replace(msg, id=letter.id, queue=queue, eta=None)


# -- discard ---------------------------------------------------------------------------
async def discard(ctx: Context, queue: str | None, filters: Filters, dry_run: bool) -> int:
    """Delete matching dead letters for good; their records stay (``failed``)."""
    broker = await ctx.broker()
    gone: list[str] = []
    count = 0
    progress = Partial(ctx, "discard", queue, "discarded", lambda: (gone, count))
    async with progress.unless(dry_run):
        for name in await ctx.scope(queue):
            async for batch in _walk(broker, name, filters):
                ids = [d.id for d in batch]
                removed, stopped = ids, None
                if not dry_run:
                    removed, stopped = await _done(broker.discard_dead(name, ids))
                count += len(removed)
                gone += removed[: _LISTED - len(gone)]
                if stopped is not None:
                    raise stopped
    if not dry_run and count:
        await ctx.record("discard", queue or "*", gone, count=count)
    return count


# -- retry -----------------------------------------------------------------------------
async def retry(ctx: Context, task_ids: Sequence[str], dry_run: bool) -> ReplayReport:
    """Send failed/cancelled tasks again under their ids (from their dead letters)."""
    ids = list(dict.fromkeys(name_list(task_ids, "task_ids")))
    broker = await ctx.broker()
    rep = _Report()
    rep.matched = len(ids)
    by_queue = await _retryable(ctx, ids, rep)
    progress = Partial(ctx, "retry", None, "sent again", lambda: (rep.done, rep.replayed))
    async with progress.unless(dry_run):
        await _retry_queues(ctx, broker, by_queue, rep, dry_run)
    result = rep.build(dry_run)
    if not dry_run and result.replayed:
        await ctx.record("retry", "*", rep.done, count=result.replayed)
    return result


async def _retry_queues(
    ctx: Context,
    broker: BrokerAdmin,
    by_queue: dict[str, list[str]],
    rep: _Report,
    dry_run: bool,
) -> None:
    """Send ``by_queue``'s tasks again from their dead letters, in batches (into ``rep``)."""
    for queue, wanted in by_queue.items():
        letters = await broker.dead_by_ids(queue, wanted)
        found = {d.id for d in letters}
        for tid in wanted:
            if tid not in found:
                rep.skip(
                    tid,
                    "cannot be rebuilt: the record does not keep the arguments and no dead "
                    "letter holds the message",
                )
        for start in range(0, len(letters), BATCH):
            batch = letters[start : start + BATCH]
            if dry_run:
                rep.would(batch)
            else:
                await _replay_batch(ctx, broker, queue, batch, rep)


async def _retryable(ctx: Context, ids: list[str], rep: _Report) -> dict[str, list[str]]:
    """The failed or cancelled ones of ``ids`` by queue; the others skipped with why."""
    records = await ctx.kernel.results.get_many(ids)
    by_queue: dict[str, list[str]] = {}
    for tid, record in zip(ids, records, strict=True):
        status = None if record is None else record.get("status")
        if record is None:
            rep.skip(tid, "not found")
        elif status not in _RETRYABLE:
            rep.skip(tid, f"is {status}: only failed or cancelled tasks are retried")
        else:
            by_queue.setdefault(str(record.get("queue", "")), []).append(tid)
    return by_queue


# -- purge -----------------------------------------------------------------------------
async def purge(ctx: Context, queue: str, scheduled: bool, dry_run: bool) -> int:
    """Drop ``queue``'s waiting messages in batches; close their records (cancelled)."""
    broker = await ctx.check(queue)
    if dry_run:
        depth = await broker.depth(queue)
        return int(depth["ready"]) + (int(depth["scheduled"]) if scheduled else 0)
    total = 0
    listed: list[str] = []
    changes = {
        "status": TaskStatus.CANCELLED.value,
        "reason": "purged",
        "finished_at": ctx.kernel.clock.time(),
    }
    closing = RecordClose(
        changes, ctx.kernel.settings.result_ttl, functools.partial(_close, ctx, changes)
    )
    async with Partial(ctx, "purge", queue, "purged", lambda: (listed, total)):
        while True:
            # Stopped part-way, the broker has had the records of what it dropped closed.
            step = broker.purge_batch_closing(
                queue, scheduled=scheduled, limit=BATCH, closing=closing
            )
            ids, stopped = await _done(step)
            total += len(ids)
            listed += ids[: _LISTED - len(listed)]
            if stopped is not None:
                raise stopped
            if len(ids) < BATCH:
                break
    if total:
        await ctx.record("purge", queue, listed, count=total, details={"scheduled": scheduled})
    return total


async def _done(step: Awaitable[list[str]]) -> tuple[list[str], StoppedPartWay | None]:
    """The ids a broker's step (a purge or discard batch) acted on, and the error that
    stopped it part-way (None if it finished): what it did counts either way."""
    try:
        return await step, None
    except StoppedPartWay as exc:
        return list(exc.done), exc


async def _close(ctx: Context, changes: dict[str, Any], ids: list[str]) -> None:
    """Write ``changes`` (cancelled, reason ``purged``) to the records of purged ids that
    have one and are not finished, in batches."""
    results = ctx.kernel.results
    for start in range(0, len(ids), BATCH):  # a backend without batches purges all at once
        batch = ids[start : start + BATCH]
        records = await results.get_many(batch)
        # Only records that exist: a task that stores no result has none to close.
        updates = [
            (tid, changes)
            for tid, record in zip(batch, records, strict=True)
            if record is not None and not is_terminal(record)
        ]
        if updates:
            await results.update_many(updates, ctx.kernel.settings.result_ttl)


class Partial:
    """An action over many batches that a failure may stop part-way: a BrokerError raised
    inside ``async with`` after ``progress()`` (ids listed, tasks done) counts something is
    raised again saying how far the action got, once what it did is audited (with
    ``details.incomplete``) if the store still answers. The step under way then may or may
    not have taken effect (a server that stopped answering may still carry it out); running
    the action again finishes it, and nothing is done twice."""

    def __init__(
        self,
        ctx: Context,
        action: str,
        queue: str | None,
        what: str,
        progress: Callable[[], tuple[list[str], int]],
    ) -> None:
        self._ctx = ctx
        self._action = action
        self._queue = queue
        self._what = what
        self._progress = progress

    def unless(self, dry_run: bool) -> contextlib.AbstractAsyncContextManager[object]:
        """This, or (a dry run, which changes nothing) a context that adds nothing."""
        return contextlib.nullcontext() if dry_run else self

    async def __aenter__(self) -> Partial:
        return self

    async def __aexit__(self, kind: object, exc: BaseException | None, tb: object) -> None:
        if not isinstance(exc, BrokerError):
            return
        ids, done = self._progress()
        if not done:
            return
        action, target = self._action, self._queue or "*"
        try:
            await self._ctx.record(action, target, ids, count=done, details={"incomplete": True})
            audited = "audited as incomplete"
        except BrokerError:
            audited = "not audited: the result store refused the entry too; it is in the log"
        where = f" of {self._queue!r}" if self._queue else ""
        raise BrokerError(
            f"{action}{where} stopped after {done:,} tasks {self._what} ({audited}); the "
            f"step under way may or may not have taken effect, and running it again "
            f"finishes it: {exc}"
        ) from exc
