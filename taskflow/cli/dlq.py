"""``taskflow dlq list|replay|discard``: the dead-letter lists.

``replay`` and ``discard`` are dry runs unless ``--apply`` is given. With ``--apply`` on a
terminal, the matching dead letters are listed first and handled in batches under a
progress bar; each batch is one ``app.admin`` call, so an interrupted run leaves every
dead letter either handled or untouched.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any, TypeVar

import click
from rich.table import Table
from rich.text import Text

from .._masking import shown
from ..operations import Admin, DeadLetter, ReplayReport
from .common import CliError
from .opscommon import APPLY_HINT, apply_option, ops_command, session
from .render import Output, ago

__all__ = ["dlq"]

F = TypeVar("F", bound=Callable[..., Any])

BATCH = 500


@click.group("dlq")
def dlq() -> None:
    """List, replay or discard dead-lettered tasks."""


def _filters(fn: F) -> F:
    """``-Q``, ``--task`` and ``--reason``: which dead letters a command is about."""
    fn = click.option(
        "--reason", default=None, help="Only this reason (failed, worker_lost, ...)."
    )(fn)
    fn = click.option("--task", "task_name", default=None, metavar="NAME", help="Only this task.")(
        fn
    )
    return click.option("-Q", "--queue", default=None, help="Only this queue (default: all).")(fn)


def _since(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise CliError(
            f"--since: {value!r} is not an ISO 8601 time (e.g. 2026-01-31T12:00:00)"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _table(letters: list[DeadLetter]) -> Table:
    """Dead letters, each error under its id (the id never breaks, the error wraps)."""
    many_queues = len({d.queue for d in letters}) > 1
    queue = ("QUEUE",) if many_queues else ()
    columns = ("ID / ERROR", "TASK", *queue, "REASON", "TRIES", "AGE")
    rows = [
        (
            Text(d.task_id) + Text(f"\n  {shown(d.error or '-')}", style="dim"),
            d.task or "?",
            *((d.queue,) if many_queues else ()),
            d.reason,
            d.attempts,
            ago(d.dead_at),
        )
        for d in letters
    ]
    return Output.table(columns, rows, numeric=("TRIES",))


@dlq.command("list")
@ops_command
@_filters
@click.option("--since", default=None, metavar="ISO", help="Only those dead since this time.")
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True)
def list_(  # noqa: PLR0917 -- click passes every option as an argument
    app_spec: str | None,
    as_json: bool,
    queue: str | None,
    task_name: str | None,
    reason: str | None,
    since: str | None,
    limit: int,
) -> None:
    """List dead letters, oldest first (never their arguments)."""
    moment = _since(since)
    with session(app_spec, as_json) as (app, out):
        page = app.admin.dead_letters(
            queue, task=task_name, reason=reason, since=moment, limit=limit
        )
        if out.json:
            out.emit(page)
        elif not page.items:
            out.line("no dead letters")
        else:
            out.print(_table(page.items))
            if page.next_cursor is not None:
                out.line(f"(more than {limit}; raise --limit to see more)")


def _matching_ids(
    adm: Admin, queue: str | None, task: str | None, reason: str | None, limit: int | None
) -> Iterator[str]:
    """The ids of the matching dead letters, page by page (at most ``limit``)."""
    cursor: str | None = None
    left = limit
    while left is None or left > 0:
        size = BATCH if left is None else min(BATCH, left)
        page = adm.dead_letters(queue, task=task, reason=reason, limit=size, cursor=cursor)
        for letter in page.items:
            yield letter.task_id
        if left is not None:
            left -= len(page.items)
        cursor = page.next_cursor
        if cursor is None or not page.items:
            return


def _print_report(out: Output, report: ReplayReport, verb: str) -> None:
    if out.json:
        out.emit(report)
        return
    done = report.matched - len(report.skipped) if report.dry_run else report.replayed
    out.line(f"matched {report.matched}, {verb} {done}, skipped {len(report.skipped)}")
    for tid, why in sorted(report.skipped.items()):
        out.line(f"skipped {tid}: {why}")
    if report.dry_run:
        out.line(APPLY_HINT)


def _replay_batches(
    out: Output,
    adm: Admin,
    queue: str | None,
    ids: list[str],
    *,
    task: str | None,
    reason: str | None,
) -> ReplayReport:
    matched = replayed = 0
    skipped: dict[str, str] = {}
    done: list[str] = []
    with out.progress("replaying", len(ids)) as bar:
        for start in range(0, len(ids), BATCH):
            chunk = ids[start : start + BATCH]
            report = adm.replay(queue, ids=chunk, task=task, reason=reason)
            matched += report.matched
            replayed += report.replayed
            skipped.update(report.skipped)
            done += report.ids
            bar.advance(len(chunk))
    return ReplayReport(matched, replayed, skipped, False, done[:1000])


@dlq.command("replay")
@ops_command
@_filters
@click.option("--id", "ids", multiple=True, metavar="ID", help="Only this task id (repeatable).")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="At most N dead letters.")
@apply_option
def replay(  # noqa: PLR0917 -- click passes every option as an argument
    app_spec: str | None,
    as_json: bool,
    queue: str | None,
    task_name: str | None,
    reason: str | None,
    ids: tuple[str, ...],
    limit: int | None,
    apply: bool,
) -> None:
    """Run dead letters again: same id, attempt 1, a fresh retry budget."""
    with session(app_spec, as_json) as (app, out):
        adm = app.admin
        wanted = list(ids) or None
        if not apply or not out.interactive:
            report = adm.replay(
                queue, ids=wanted, task=task_name, reason=reason, limit=limit, dry_run=not apply
            )
        else:
            # On a terminal: find the ids first, then replay them in batches under a bar.
            found = wanted or list(_matching_ids(adm, queue, task_name, reason, limit))
            report = ReplayReport(0, 0)
            if found:
                report = _replay_batches(out, adm, queue, found, task=task_name, reason=reason)
        _print_report(out, report, "would replay" if not apply else "replayed")


@dlq.command("discard")
@ops_command
@_filters
@click.option("--id", "ids", multiple=True, metavar="ID", help="Only this task id (repeatable).")
@apply_option
def discard(  # noqa: PLR0917 -- click passes every option as an argument
    app_spec: str | None,
    as_json: bool,
    queue: str | None,
    task_name: str | None,
    reason: str | None,
    ids: tuple[str, ...],
    apply: bool,
) -> None:
    """Remove dead letters for good (their records stay failed)."""
    with session(app_spec, as_json) as (app, out):
        adm = app.admin
        wanted = list(ids) or None
        if not apply:
            count = adm.discard(queue, ids=wanted, task=task_name, reason=reason, dry_run=True)
        else:
            with out.progress("discarding", None):
                count = adm.discard(queue, ids=wanted, task=task_name, reason=reason)
        if out.json:
            out.emit({"dry_run": not apply, "discarded": count})
            return
        out.line(f"{'discarded' if apply else 'would discard'} {count} dead letter(s)")
        if not apply:
            out.line(APPLY_HINT)
