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
from typing import TYPE_CHECKING, Any, TypeVar

import click

from ..errors import ConfigError, NotFound, PayloadError, TaskflowError
from ..worker.foreground import Runner, serve
from ..worker.signals import StopControl
from .options import app_option, connect_timeout_option, loglevel_option

if TYPE_CHECKING:
    from ..app import App
    from ..beat import Beat
    from ..worker import Worker

__all__ = ["beat", "schedules", "with_beat"]

F = TypeVar("F", bound=Callable[..., Any])


@contextmanager
def _app(spec: str | None) -> Iterator[App]:
    """Load the app, turn taskflow errors into one-line CLI errors, close the app."""
    from .main import CliError, CliRuntimeError, _load

    if not spec:
        raise CliError("no app given: pass -A MODULE[:ATTR] or set TASKFLOW_APP")
    app = _load(spec)
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


class _WorkerAndBeat:
    """A worker with a beat beside it, started and stopped together (``worker --beat``)."""

    def __init__(self, worker: Worker, beat: Beat) -> None:
        self.worker = worker
        self.beat = beat

    @property
    def fatal(self) -> BaseException | None:
        """The worker's stage that died, if one did."""
        return self.worker.fatal

    def start(self) -> None:
        self.worker.start()
        try:
            self.beat.start()
        except BaseException:
            self.worker.stop_now()
            raise

    def stop(self, timeout: float = 30.0) -> None:
        self.beat.stop()  # no new runs while the worker drains
        self.worker.stop(timeout)

    def stop_now(self) -> None:
        self.beat.stop()
        self.worker.stop_now()


def with_beat(worker: Worker, beat: Beat) -> Runner:
    """``worker`` and ``beat`` as one thing to run in the foreground."""
    return _WorkerAndBeat(worker, beat)


class _BeatAlone:
    """A beat as the foreground loop runs it (it has no stages that can die)."""

    fatal: BaseException | None = None

    def __init__(self, beat: Beat) -> None:
        self.beat = beat

    def start(self) -> None:
        self.beat.start()

    def stop(self, timeout: float = 30.0) -> None:
        self.beat.stop(timeout)

    def stop_now(self) -> None:
        self.beat.stop_now()


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
@click.pass_context
def beat(  # noqa: PLR0917 -- click passes every option as an argument
    ctx: click.Context,
    app_spec: str | None,
    lease: float,
    max_interval: float,
    connect_timeout: float,
    loglevel: str,
) -> None:
    """Enqueue the app's periodic tasks until SIGTERM or SIGINT (any number may run)."""
    from .main import logging_setup

    # Logging is set up after the import (the module may have configured it: then it is
    # left alone) and kept until the app is closed, which logs the last lines.
    with (
        logging_setup(loglevel.lower()) as configure,
        StopControl() as control,
        _app(app_spec) as app,
    ):
        configure()
        runner = _BeatAlone(app.beat(lease=lease, max_interval=max_interval))
        code = serve(app, runner, control, grace=0.0, connect_timeout=connect_timeout)
    ctx.exit(code)


@click.group("schedules")
def schedules() -> None:
    """List and change the app's periodic schedules (stored ones survive restarts)."""


@schedules.command("list")
@app_option
def list_schedules(app_spec: str | None) -> None:
    """Show every schedule: name, trigger, task, next run (UTC), state and source."""
    from ..beat import periodic_of

    with _app(app_spec) as app:
        infos = periodic_of(app).list()
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


def _json(value: str | None, what: str, kind: type) -> Any:
    from .main import CliError

    if value is None:
        return kind()
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as exc:
        raise CliError(f"{what} is not valid JSON: {exc}") from None
    if not isinstance(parsed, kind):
        raise CliError(f"{what} must be a JSON {'array' if kind is list else 'object'}")
    return parsed


@schedules.command("add")
@app_option
@click.argument("name")
@click.option("--task", "task_name", required=True, help="Registered task name to run.")
@click.option("--cron", default=None, help="Cron expression (5 fields, or 6: seconds first).")
@click.option("--every", type=float, default=None, help="Interval in seconds.")
@click.option("--args", "args_json", default=None, help="Positional arguments, a JSON array.")
@click.option("--kwargs", "kwargs_json", default=None, help="Keyword arguments, JSON object.")
@click.option("--queue", default=None, help="Queue (default: the task's).")
@click.option("--priority", type=int, default=None, help="Priority 0-9.")
@click.option("--timezone", default=None, help="IANA time zone of a cron (default UTC).")
@click.option(
    "--missed",
    type=click.Choice(["once", "skip"]),
    default="once",
    show_default=True,
    help="After downtime: fire the latest missed run once, or skip missed runs.",
)
def add_schedule(  # noqa: PLR0917 -- click passes every option as an argument
    app_spec: str | None,
    name: str,
    task_name: str,
    cron: str | None,
    every: float | None,
    args_json: str | None,
    kwargs_json: str | None,
    queue: str | None,
    priority: int | None,
    timezone: str | None,
    missed: str,
) -> None:
    """Store a schedule NAME (replacing a stored one of that name)."""
    args = _json(args_json, "--args", list)
    kwargs = _json(kwargs_json, "--kwargs", dict)
    with _app(app_spec) as app:
        schedule = app.add_periodic(
            task_name,
            cron=cron,
            every=every,
            name=name,
            args=args,
            kwargs=kwargs,
            queue=queue,
            priority=priority,
            timezone=timezone,
            missed=missed,
            persist=True,
        )
    click.echo(f"added {schedule.name}: {schedule.trigger} -> {schedule.task}")


@schedules.command("remove")
@app_option
@click.argument("name")
def remove_schedule(app_spec: str | None, name: str) -> None:
    """Remove the stored schedule NAME."""
    with _app(app_spec) as app:
        from ..beat import periodic_of

        if name in periodic_of(app).declared:
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
