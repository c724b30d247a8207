"""``taskflow beat`` and ``taskflow schedules list|add|remove|pause|resume``.

``taskflow beat`` runs the same foreground loop as ``taskflow worker`` (connection retries,
signal handling, exit status 0 after a clean stop). Any number of beat processes may run; one leads.
The ``schedules`` commands change the schedules stored in the app's backend; a running beat
sees the change at its next tick. Errors are one line on stderr: status 2 for usage and
configuration errors, 1 for a schedule that does not exist or a backend that is away.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, TypeVar

import click

from ..app import App
from ..beat import Beat, ScheduleSpec
from ..errors import ConfigError, NotFound, PayloadError, TaskflowError
from ..kernel import ServiceGroup
from ..worker import Worker
from ..worker.foreground import Runner, serve
from ..worker.signals import StopControl
from .common import CliError, CliRuntimeError, load, logging_setup
from .options import app_option, connect_timeout_option, log_format_option, loglevel_option

__all__ = ["beat", "schedules", "with_beat"]

F = TypeVar("F", bound=Callable[..., Any])


@contextmanager
def _app(spec: str | None) -> Iterator[App]:
    """Load the app, turn taskflow errors into one-line CLI errors, close the app."""
    if not spec:
        raise CliError("no app given: pass -A MODULE[:ATTR] or set TASKFLOW_APP")
    app = load(spec)
    try:
        yield app
    except NotFound as exc:
        raise CliRuntimeError(str(exc.args[0] if exc.args else exc)) from None
    except (ConfigError, PayloadError, ValueError) as exc:
        raise CliError(str(exc)) from None
    except TaskflowError as exc:
        raise CliRuntimeError(str(exc)) from None
    finally:
        app.close()


def with_beat(worker: Worker, beat: Beat) -> Runner:
    """``worker`` and ``beat`` as one thing to run in the foreground (``worker --beat``):
    the beat stops first, so that no new runs are enqueued while the worker drains."""
    return ServiceGroup(worker, beat)


@click.command("beat")
@app_option
@click.option(
    "--lease",
    type=click.FloatRange(min=0.5),
    default=10.0,
    show_default=True,
    help="Seconds of one leadership lease; a dead leader is replaced within this.",
)
@click.option(
    "--max-interval",
    type=click.FloatRange(min=0.01),
    default=1.0,
    show_default=True,
    help="Longest sleep between ticks (how soon stored schedule changes are seen).",
)
@connect_timeout_option
@loglevel_option
@log_format_option
@click.pass_context
def beat(  # noqa: PLR0917 -- click passes every option as an argument
    ctx: click.Context,
    app_spec: str | None,
    lease: float,
    max_interval: float,
    connect_timeout: float,
    loglevel: str,
    log_format: str,
) -> None:
    """Enqueue the app's periodic tasks until SIGTERM or SIGINT (any number may run)."""
    # Logging is set up after the import (the module may have configured it: then it is
    # left alone) and kept until the app is closed, which logs the last lines.
    with (
        logging_setup(loglevel.lower(), log_format.lower()) as configure,
        StopControl() as control,
        _app(app_spec) as app,
    ):
        configure()
        runner = app.beat(lease=lease, max_interval=max_interval)
        code = serve(app.kernel, runner, control, grace=0.0, connect_timeout=connect_timeout)
    ctx.exit(code)


@click.group("schedules")
def schedules() -> None:
    """List and change the app's periodic schedules (stored ones survive restarts)."""


@schedules.command("list")
@app_option
def list_schedules(app_spec: str | None) -> None:
    """Show every schedule: name, trigger, task, next run (UTC), state and source."""
    with _app(app_spec) as app:
        infos = app.schedules.list()
    if not infos:
        click.echo("no schedules")
        return
    rows = [("NAME", "TRIGGER", "TASK", "NEXT (UTC)", "STATE", "SOURCE")]
    for info in infos:
        nxt = datetime.fromtimestamp(info.next_fire, UTC).strftime("%Y-%m-%d %H:%M:%S")
        state = "paused" if info.paused else "active"
        s = info.schedule
        rows.append((s.name, s.trigger, s.task, nxt, state, info.source))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


def _json(kind: type[list[Any]] | type[dict[str, Any]]) -> Callable[..., Any]:
    """A click callback that parses an option's JSON array or object (absent: empty)."""
    what = "array" if kind is list else "object"

    def parse(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
        if value is None:
            return kind()
        option = param.opts[0]
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError as exc:
            raise CliError(f"{option} is not valid JSON: {exc}") from None
        if not isinstance(parsed, kind):
            raise CliError(f"{option} must be a JSON {what}")
        return parsed

    return parse


# How ``schedules add`` spells each ScheduleSpec option (``name`` is its NAME argument).
# The command gets one option per ScheduleSpec key, in the TypedDict's order: a key added
# there without a line here fails at import, not in front of a user.
_SCHEDULE_OPTIONS: dict[str, Callable[[F], F]] = {
    "cron": click.option("--cron", help="Cron expression (5 fields, or 6: seconds first)."),
    "every": click.option("--every", type=float, help="Interval in seconds."),
    "args": click.option(
        "--args", callback=_json(list), help="Positional arguments, a JSON array."
    ),
    "kwargs": click.option(
        "--kwargs", callback=_json(dict), help="Keyword arguments, JSON object."
    ),
    "queue": click.option("--queue", help="Queue (default: the task's)."),
    "priority": click.option("--priority", type=int, help="Priority 0-9."),
    "timezone": click.option("--timezone", help="IANA time zone of a cron (default UTC)."),
    "missed": click.option(
        "--missed",
        type=click.Choice(["once", "skip"]),
        default="once",
        show_default=True,
        help="After downtime: fire the latest missed run once, or skip missed runs.",
    ),
}


def _schedule_options(fn: F) -> F:
    """Add an option for every :class:`~taskflow.beat.ScheduleSpec` key but ``name``."""
    for key in reversed([k for k in ScheduleSpec.__annotations__ if k != "name"]):
        fn = _SCHEDULE_OPTIONS[key](fn)
    return fn


@schedules.command("add")
@app_option
@click.argument("name")
@click.option("--task", "task_name", required=True, help="Registered task name to run.")
@_schedule_options
def add_schedule(app_spec: str | None, name: str, task_name: str, **spec: Any) -> None:
    """Store a schedule NAME (replacing a stored one of that name)."""
    with _app(app_spec) as app:
        schedule = app.add_periodic(task_name, name=name, persist=True, **spec)
    click.echo(f"added {schedule.name}: {schedule.trigger} -> {schedule.task}")


@schedules.command("remove")
@app_option
@click.argument("name")
def remove_schedule(app_spec: str | None, name: str) -> None:
    """Remove the stored schedule NAME."""
    with _app(app_spec) as app:
        if name in app.schedules.declared:
            raise ConfigError(
                f"schedule {name!r} is declared in code; remove it there (or pause it)"
            )
        if not app.remove_periodic(name):
            raise NotFound(f"no schedule named {name!r}")
    click.echo(f"removed {name}")


@schedules.command("pause")
@app_option
@click.argument("name")
def pause_schedule(app_spec: str | None, name: str) -> None:
    """Stop firing NAME until it is resumed."""
    with _app(app_spec) as app:
        app.pause_periodic(name)
    click.echo(f"paused {name}")


@schedules.command("resume")
@app_option
@click.argument("name")
def resume_schedule(app_spec: str | None, name: str) -> None:
    """Fire NAME again from its next run (runs during the pause are not made up)."""
    with _app(app_spec) as app:
        app.resume_periodic(name)
    click.echo(f"resumed {name}")
