"""Operator commands about queues and the cluster: ``queues``, ``inspect``, ``purge``,
``pause``, ``resume``, ``paused``, ``workers``, ``stats`` and ``audit``.

They are thin clients of ``app.admin`` (:class:`~taskflow.operations.Admin`): they read,
print, and for a destructive action say what would happen unless ``--apply`` is given.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click
from rich.console import Group, RenderableType
from rich.text import Text

from ..operations import Admin, ClusterStats, QueueInfo, TaskInfo, WorkerInfo
from .opscommon import APPLY_HINT, apply_option, ops_command, session, stopped_by_ctrl_c
from .render import Output, ago, when

__all__ = ["audit", "inspect", "pause", "paused", "purge", "queues", "resume", "stats", "workers"]

F = TypeVar("F", bound=Callable[..., Any])

STATES = ("ready", "scheduled", "running", "dead")


def watch_options(fn: F) -> F:
    """``--watch SECONDS`` (redraw until Ctrl-C) and the hidden ``--watch-count N``."""
    fn = click.option(
        "--watch-count",
        "watch_count",
        type=click.IntRange(min=1),
        default=None,
        hidden=True,
        help="Stop after N rounds (for scripts and tests).",
    )(fn)
    return click.option(
        "--watch",
        "watch",
        type=click.FloatRange(min=0.01),
        default=None,
        metavar="SECONDS",
        help="Redraw every SECONDS until Ctrl-C (with --json: one JSON line per round).",
    )(fn)


def _queue_table(infos: list[QueueInfo]) -> RenderableType:
    if not infos:
        return Text("no queues")
    rows = [
        (q.name, q.ready, q.scheduled, q.running, q.dead, "yes" if q.paused else "no")
        for q in infos
    ]
    columns = ("QUEUE", "READY", "SCHEDULED", "RUNNING", "DEAD", "PAUSED")
    return Output.table(columns, rows, numeric=columns[1:5])


@click.command("queues")
@ops_command
@watch_options
def queues(
    app_spec: str | None, as_json: bool, watch: float | None, watch_count: int | None
) -> None:
    """Show every queue: ready, scheduled, running and dead tasks, and whether paused."""
    with stopped_by_ctrl_c(watch is not None), session(app_spec, as_json) as (app, out):
        adm = app.admin

        def render() -> tuple[Any, RenderableType]:
            infos = adm.queues()
            if out.json:  # the list of queues, as before: alarms are in `stats --json`
                return infos, _queue_table(infos)
            return infos, Group(*_alarm_lines(adm.alarms()), _queue_table(infos))

        if watch is not None:
            out.watch(render, watch, watch_count)
            return
        data, view = render()
        out.show(data, view)


def task_rows(infos: list[TaskInfo]) -> list[tuple[object, ...]]:
    """Table rows of tasks: id, name, priority, attempts, and age (or when due)."""
    return [
        (t.id, t.task or "?", t.priority, t.attempts, ago(t.eta or t.created_at)) for t in infos
    ]


TASK_COLUMNS = ("ID", "TASK", "PRI", "TRIES", "AGE/DUE")


@click.command("inspect")
@ops_command
@click.argument("queue")
@click.option("--state", type=click.Choice(STATES), default="ready", show_default=True)
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("--offset", type=click.IntRange(min=0), default=0, show_default=True)
def inspect(  # noqa: PLR0917 -- click passes every option as an argument
    app_spec: str | None, as_json: bool, queue: str, state: str, limit: int, offset: int
) -> None:
    """List the tasks of QUEUE in one state (never their arguments)."""
    with session(app_spec, as_json) as (app, out):
        infos = app.admin.peek(queue, state=state, limit=limit, offset=offset)
        if out.json:
            out.emit(infos)
        elif not infos:
            out.line(f"no {state} tasks in {queue}")
        else:
            out.line(f"{state} tasks in {queue}:")
            out.print(Output.table(TASK_COLUMNS, task_rows(infos), numeric=("PRI", "TRIES")))


@click.command("purge")
@ops_command
@click.argument("queue")
@click.option("--scheduled", is_flag=True, help="Also drop the tasks due later.")
@apply_option
def purge(app_spec: str | None, as_json: bool, queue: str, scheduled: bool, apply: bool) -> None:
    """Drop QUEUE's waiting tasks (their records become cancelled); running ones stay."""
    what = "ready and scheduled" if scheduled else "ready"
    with session(app_spec, as_json) as (app, out):
        adm = app.admin
        if not apply:
            count = adm.purge(queue, scheduled=scheduled, dry_run=True)
            if out.json:
                out.emit({"queue": queue, "dry_run": True, "purged": count})
                return
            out.line(f"would purge {count} {what} task(s) from {queue}")
            out.line(APPLY_HINT)
            return
        with out.progress(f"purging {queue}", None):
            count = adm.purge(queue, scheduled=scheduled)
        if out.json:
            out.emit({"queue": queue, "dry_run": False, "purged": count})
        else:
            out.line(f"purged {count} {what} task(s) from {queue}")


@click.command("pause")
@ops_command
@click.argument("queue")
def pause(app_spec: str | None, as_json: bool, queue: str) -> None:
    """Stop workers taking tasks from QUEUE (sending still works; undo with resume)."""
    with session(app_spec, as_json) as (app, out):
        app.admin.pause(queue)
        out.show({"queue": queue, "paused": True}, f"paused {queue}")


@click.command("resume")
@ops_command
@click.argument("queue")
def resume(app_spec: str | None, as_json: bool, queue: str) -> None:
    """Let workers take tasks from QUEUE again."""
    with session(app_spec, as_json) as (app, out):
        app.admin.resume(queue)
        if out.json:
            out.emit({"queue": queue, "paused": False})
        else:
            out.line(f"resumed {queue}")


@click.command("paused")
@ops_command
def paused(app_spec: str | None, as_json: bool) -> None:
    """List the paused queues."""
    with session(app_spec, as_json) as (app, out):
        names = sorted(app.admin.paused())
        if out.json:
            out.emit(names)
        else:
            out.line("\n".join(names) if names else "no paused queues")


def _worker_rows(infos: list[WorkerInfo]) -> list[tuple[object, ...]]:
    return [
        (
            w.id,
            ",".join(w.queues),
            f"{len(w.running)}/{w.concurrency}",
            ago(w.last_seen),
            w.state.upper() if w.state != "alive" else w.state,
        )
        for w in infos
    ]


@click.command("workers")
@ops_command
def workers(app_spec: str | None, as_json: bool) -> None:
    """List the workers with their last heartbeat; LOST marks one that stopped beating."""
    with session(app_spec, as_json) as (app, out):
        infos = app.admin.workers()
        if out.json:
            out.emit(infos)
        elif not infos:
            out.line("no workers")
        else:
            columns = ("WORKER", "QUEUES", "BUSY", "SEEN", "STATE")
            table = Output.table(columns, _worker_rows(infos), numeric=("BUSY",), whole=("WORKER",))
            out.print(table)


def _counters_table(stats: ClusterStats) -> RenderableType:
    names = sorted(set(stats.totals) | set(stats.rate_1m) | set(stats.rate_5m))
    rows = [
        (
            name,
            stats.totals.get(name, 0),
            _rate(stats.rate_1m.get(name)),
            _rate(stats.rate_5m.get(name)),
        )
        for name in names
    ]
    columns = ("COUNTER", "TOTAL", "/S 1 MIN", "/S 5 MIN")
    return Output.table(columns, rows, numeric=columns[1:])


def _alarm_lines(alarms: list[str]) -> list[Text]:
    """The broker's alarms, one line each, to lead a table (``app.admin.alarms()``)."""
    return [Text(f"ALARM  {a}", style="bold red") for a in alarms]


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _stats_view(stats: ClusterStats) -> RenderableType:
    head = Text(f"{when(stats.at)} UTC  workers: {stats.workers} alive, {stats.lost_workers} lost")
    queue_rows = [
        (q.name, q.ready, q.scheduled, q.running, q.dead, "yes" if q.paused else "no")
        for q in stats.queues
    ]
    qcols = ("QUEUE", "READY", "SCHEDULED", "RUNNING", "DEAD", "PAUSED")
    queue_table = Output.table(qcols, queue_rows, numeric=qcols[1:5])
    parts: list[RenderableType] = [*_alarm_lines(stats.alarms), head, Text(""), queue_table]
    if stats.tasks:
        tcols = ("TASK", "RUNNING", "DEAD")
        task_rows_ = [(t.task, t.running, t.dead) for t in stats.tasks]
        parts += [Text(""), Output.table(tcols, task_rows_, numeric=tcols[1:])]
    parts += [Text(""), _counters_table(stats)]
    return Group(*parts)


@click.command("stats")
@ops_command
@watch_options
def stats(
    app_spec: str | None, as_json: bool, watch: float | None, watch_count: int | None
) -> None:
    """Cluster counters: queue depths, tasks running and dead, outcome totals and rates."""
    with stopped_by_ctrl_c(watch is not None), session(app_spec, as_json) as (app, out):
        adm: Admin = app.admin

        def render() -> tuple[Any, RenderableType]:
            current = adm.stats()
            return current, _stats_view(current)

        if watch is not None:
            out.watch(render, watch, watch_count)
            return
        data, view = render()
        out.show(data, view)


@click.command("audit")
@ops_command
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True)
def audit(app_spec: str | None, as_json: bool, limit: int) -> None:
    """The latest admin actions, newest first: when, who, what, on what, how many."""
    with session(app_spec, as_json) as (app, out):
        entries = app.admin.audit(limit=limit)
        if out.json:
            out.emit(entries)
        elif not entries:
            out.line("no audit entries")
        else:
            rows = [(when(e.at), e.actor, e.action, e.target, e.count) for e in entries]
            columns = ("AT (UTC)", "ACTOR", "ACTION", "TARGET", "COUNT")
            out.print(Output.table(columns, rows, numeric=("COUNT",)))
