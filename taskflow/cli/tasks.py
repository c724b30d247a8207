"""Operator commands about single tasks: ``task get|cancel|retry``, ``send`` and ``events``."""

from __future__ import annotations

import difflib
import sys
from datetime import datetime
from typing import Any

import click
from rich.console import Group
from rich.text import Text

from ..errors import PayloadError, ResultTimeout, TaskCancelled, TaskFailed, TaskTimeout
from ..eventbus import TaskEvent
from ..operations import TaskInfo
from .common import CliError, CliRuntimeError
from .opscommon import (
    APPLY_HINT,
    apply_option,
    ops_command,
    parse_json,
    session,
    stopped_by_ctrl_c,
)
from .render import Output, when

__all__ = ["events", "send", "task"]


@click.group("task")
def task() -> None:
    """Look at one task, cancel tasks, or send failed ones again."""


def _utc(moment: datetime | None) -> str | None:
    return None if moment is None else f"{when(moment)} UTC"


def _details(info: TaskInfo) -> Group:
    error = info.error or {}
    fields = [
        ("id", info.id),
        ("task", info.task or "?"),
        ("queue", info.queue),
        ("state", info.state),
        ("status", info.status),
        ("priority", info.priority),
        ("attempts", info.attempts),
        ("due", _utc(info.eta)),
        ("created", _utc(info.created_at)),
        ("started", _utc(info.started_at)),
        ("finished", _utc(info.finished_at)),
        ("worker", info.worker),
        ("error", f"{error.get('type', '')}: {error.get('message', '')}" if error else None),
    ]
    parts: list[Any] = [Output.fields(fields)]
    if info.history:
        rows = [
            (
                n,
                h.get("status"),
                h.get("attempts"),
                when(h.get("finished_at")),
                (h.get("error") or {}).get("type"),
            )
            for n, h in enumerate(info.history, 1)
        ]
        columns = ("CYCLE", "STATUS", "TRIES", "FINISHED (UTC)", "ERROR")
        history = Output.table(columns, rows, numeric=("CYCLE", "TRIES"))
        parts += [Text(""), Text("earlier cycles:"), history]
    return Group(*parts)


@task.command("get")
@ops_command
@click.argument("task_id")
def get(app_spec: str | None, as_json: bool, task_id: str) -> None:
    """Show one task: where it is, its record, and its earlier cycles."""
    with session(app_spec, as_json) as (app, out):
        info = app.admin.task(task_id)
        out.show(info, _details(info))


@task.command("cancel")
@ops_command
@click.argument("task_ids", nargs=-1, required=True)
@apply_option
def cancel(app_spec: str | None, as_json: bool, task_ids: tuple[str, ...], apply: bool) -> None:
    """Cancel tasks: a queued one never runs, a running one is stopped."""
    with session(app_spec, as_json) as (app, out):
        adm = app.admin
        infos = [adm.task(tid) for tid in task_ids]  # every id must exist before anything changes
        if not apply:
            if out.json:
                out.emit(
                    {"dry_run": True, "tasks": [{"id": i.id, "status": i.status} for i in infos]}
                )
                return
            for info in infos:
                out.line(f"would cancel {info.id} ({info.task or '?'}, {info.status})")
            out.line(APPLY_HINT)
            return
        done = {tid: adm.cancel(tid) for tid in task_ids}
        if out.json:
            out.emit({"dry_run": False, "cancelled": done})
            return
        for tid, ok in done.items():
            out.line(f"cancelled {tid}" if ok else f"not cancelled {tid}: already finished")


@task.command("retry")
@ops_command
@click.argument("task_ids", nargs=-1, required=True)
@apply_option
def retry(app_spec: str | None, as_json: bool, task_ids: tuple[str, ...], apply: bool) -> None:
    """Send failed or cancelled tasks again: same id, a fresh attempt budget."""
    with session(app_spec, as_json) as (app, out):
        adm = app.admin
        for tid in task_ids:
            adm.task(tid)  # an unknown id fails the command before anything changes
        report = adm.retry_report(list(task_ids), dry_run=not apply)
        if out.json:
            out.emit(report)
            return
        verb = "retried" if apply else "would retry"
        for tid in report.ids:
            out.line(f"{verb} {tid}")
        for tid, why in report.skipped.items():
            out.line(f"skipped {tid}: {why}")
        if not apply:
            out.line(APPLY_HINT)


@click.command("send")
@ops_command
@click.argument("task_name", metavar="TASK")
@click.option("--args", "args_json", metavar="JSON", help="Positional arguments: a JSON array.")
@click.option("--kwargs", "kwargs_json", metavar="JSON", help="Keyword arguments: a JSON object.")
@click.option("-Q", "--queue", default=None, help="Queue (default: the task's).")
@click.option("--priority", type=click.IntRange(0, 9), default=None, help="0 (low) to 9 (high).")
@click.option(
    "--countdown",
    type=click.FloatRange(min=0),
    default=None,
    metavar="SECONDS",
    help="Run it no sooner than this many seconds from now.",
)
@click.option(
    "--idempotency-key",
    "idempotency_key",
    default=None,
    metavar="KEY",
    help="Send it at most once per key (a repeat prints the first id).",
)
@click.option(
    "--wait",
    type=click.FloatRange(min=0),
    is_flag=False,
    flag_value=60.0,
    default=None,
    metavar="[SECONDS]",
    help="Wait for the result (60 s unless given) and print it.",
)
def send(  # noqa: PLR0917 -- click passes every option as an argument
    app_spec: str | None,
    as_json: bool,
    task_name: str,
    args_json: str | None,
    kwargs_json: str | None,
    queue: str | None,
    priority: int | None,
    countdown: float | None,
    idempotency_key: str | None,
    wait: float | None,
) -> None:
    """Send TASK by name and print its id (with --wait, also its result)."""
    args = parse_json("--args", args_json, list)
    kwargs = parse_json("--kwargs", kwargs_json, dict)
    options = {
        k: v
        for k, v in (
            ("queue", queue),
            ("priority", priority),
            ("countdown", countdown),
            ("idempotency_key", idempotency_key),
        )
        if v is not None
    }
    with session(app_spec, as_json) as (app, out):
        if wait is not None and app.registry.unstored(task_name):
            raise CliError(
                f"--wait: task {task_name!r} is declared store_result=False, so its outcome "
                "is not stored and there is nothing to wait for; nothing was sent"
            )
        if len(app.registry) and task_name not in app.registry:
            # Sending by name needs no declaration here, but an app that declares tasks
            # and not this one most likely meets a typo: its workers would dead-letter it.
            click.echo(f"taskflow send: warning: {unknown_task(app, task_name)}", err=True)
        try:
            result = app.send_task(task_name, args, kwargs, **options)
        except PayloadError as exc:  # the arguments do not fit the task: bad usage
            raise CliError(str(exc)) from None
        if wait is None:
            out.show({"id": result.id}, result.id)
            return
        if not out.json:
            out.line(result.id)
        try:
            value = result.get(timeout=wait)
        except (TaskFailed, TaskCancelled, TaskTimeout) as exc:
            if out.json:
                out.emit({"id": result.id, "status": result.status.value, "error": str(exc)})
            raise CliRuntimeError(f"task {result.id} {result.status.value}: {exc}") from None
        except ResultTimeout:
            raise CliRuntimeError(
                f"task {result.id}: no result within {wait:g} s (it is still {result.status.value})"
            ) from None
        if out.json:
            out.emit({"id": result.id, "status": "succeeded", "result": value})
        else:
            out.line(repr(value))


def unknown_task(app: Any, name: str) -> str:
    """What to say of a send of ``name``, which ``app`` does not declare."""
    close = difflib.get_close_matches(name, list(app.registry), n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return (
        f"task {name!r} is not declared in this app{hint}; sent anyway: a worker that does "
        "not know it fails it with NotRegistered and dead-letters it"
    )


def _event_line(event: TaskEvent) -> str:
    took = "" if event.duration is None else f" {event.duration:.3f}s"
    error = f" {event.error.get('type', '')}" if event.error else ""
    return (
        f"{when(event.timestamp)} {event.status:<9} {event.task_name} {event.task_id} "
        f"queue={event.queue} attempt={event.attempt}{took}{error}"
    )


def _event_data(event: TaskEvent) -> dict[str, Any]:
    """An event without its result value (payloads are not printed)."""
    error = event.error or {}
    return {
        "kind": event.kind,
        "task_id": event.task_id,
        "task": event.task_name,
        "queue": event.queue,
        "status": event.status,
        "attempt": event.attempt,
        "timestamp": event.timestamp,
        "duration": event.duration,
        "error": error.get("type") if error else None,
    }


@click.command("events")
@ops_command
@click.option("--task", "task_name", default=None, metavar="NAME", help="Only this task.")
@click.option("--queue", default=None, metavar="Q", help="Only this queue.")
@click.option("--count", type=click.IntRange(min=1), default=None, hidden=True)
def events(
    app_spec: str | None, as_json: bool, task_name: str | None, queue: str | None, count: int | None
) -> None:
    """Print finish events of every worker as they happen, until Ctrl-C."""
    with stopped_by_ctrl_c():
        _tail(app_spec, as_json, task_name, queue, count)


def _tail(
    app_spec: str | None, as_json: bool, task_name: str | None, queue: str | None, count: int | None
) -> None:
    with session(app_spec, as_json) as (app, out):
        seen = 0
        with app.events(buffer=1000, drop="oldest") as subscription:
            if not out.json:
                click.echo("listening for finish events (Ctrl-C to stop)", err=True)
            for event in subscription:
                if (task_name and event.task_name != task_name) or (queue and event.queue != queue):
                    continue
                if out.json:
                    out.emit(_event_data(event))
                else:
                    out.line(_event_line(event))
                sys.stdout.flush()
                seen += 1
                if count is not None and seen >= count:
                    return
