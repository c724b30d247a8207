"""The ``taskflow`` command line: a click group; ``taskflow worker`` runs a worker.

Exit statuses: 0 after a clean stop, 1 when the worker could not run (a broker still
unreachable after ``--connect-timeout``, a child that would not stop), 2 for usage and
configuration errors (a missing module or attribute, a module that fails to import), 70 when
a worker stage died (so that whatever supervises the process restarts it). Errors are one
line on stderr.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import click

from .. import __version__
from ..errors import ConfigError, TaskflowError
from ..worker.foreground import serve
from ..worker.signals import StopControl
from .beat import beat, schedules, with_beat
from .common import (
    LOG_FORMAT,
    CliError,
    CliRuntimeError,
    configure_logging,
    load,
    logging_setup,
)
from .loader import AppLoadError, check_module
from .options import APP_ENV, app_option, connect_timeout_option, loglevel_option
from .supervisor import SUPERVISOR_ENV, Supervisor

__all__ = [
    "APP_ENV",
    "LOG_FORMAT",
    "CliError",
    "CliRuntimeError",
    "WorkerOptions",
    "cli",
    "configure_logging",
    "logging_setup",
    "main",
]


@dataclass(frozen=True)
class WorkerOptions:
    """What ``taskflow worker`` was asked to run, parsed and checked."""

    spec: str
    queues: list[str]
    concurrency: int
    prefetch: int | None
    grace: float
    loglevel: str
    beat: bool = False
    connect_timeout: float = 60.0

    def child_command(self) -> list[str]:
        """The command a supervised worker process runs: this command with ``-P 1``."""
        command = [sys.executable, "-m", "taskflow.cli.main", "worker", "-A", self.spec]
        command += ["-c", str(self.concurrency), "-P", "1", "--grace", repr(self.grace)]
        command += ["--connect-timeout", repr(self.connect_timeout)]
        command += ["--loglevel", self.loglevel]
        if self.queues:
            command += ["-Q", ",".join(self.queues)]
        if self.prefetch is not None:
            command += ["--prefetch", str(self.prefetch)]
        if self.beat:
            command += ["--beat"]
        return command


@click.group(name="taskflow", context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(
    __version__, "-V", "--version", prog_name="taskflow", message="%(prog)s %(version)s"
)
def cli() -> None:
    """taskflow: a typed, prioritized, distributed task queue."""


@cli.command()
@app_option
@click.option(
    "-Q",
    "--queues",
    "queues",
    metavar="Q1,Q2",
    multiple=True,
    help="Queues to consume, comma-separated, in priority order "
    "(default: the app's default queue).",
)
@click.option(
    "-c",
    "--concurrency",
    type=click.IntRange(min=1),
    default=8,
    show_default=True,
    help="Tasks run at once per process.",
)
@click.option(
    "-P",
    "--processes",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Worker processes; more than 1 runs a supervisor that restarts dead ones.",
)
@click.option(
    "--prefetch",
    type=click.IntRange(min=0),
    default=None,
    help="Messages held beyond free slots (default: concurrency // 2).",
)
@click.option(
    "--grace",
    type=click.FloatRange(min=0),
    default=30.0,
    show_default=True,
    help="Seconds running tasks get to finish after SIGTERM/SIGINT.",
)
@connect_timeout_option
@loglevel_option
@click.option("--beat", "run_beat", is_flag=True, help="Also run a beat in each worker process.")
@click.pass_context
def worker(  # noqa: PLR0917 -- click passes every option as an argument
    ctx: click.Context,
    app_spec: str | None,
    queues: tuple[str, ...],
    concurrency: int,
    processes: int,
    prefetch: int | None,
    grace: float,
    connect_timeout: float,
    loglevel: str,
    run_beat: bool,
) -> None:
    """Run a worker in the foreground until SIGTERM or SIGINT (twice: stop now)."""
    if not app_spec:
        raise CliError(f"no app given: pass -A MODULE[:ATTR] or set {APP_ENV}")
    options = WorkerOptions(
        app_spec,
        _split_queues(queues),
        concurrency,
        prefetch,
        grace,
        loglevel.lower(),
        run_beat,
        connect_timeout,
    )
    with logging_setup(options.loglevel) as configure:
        if processes > 1:
            configure()  # the supervisor imports no user code
            code = _supervise(options, processes)
        else:
            code = _run_one(options, configure)
    ctx.exit(code)


def _split_queues(values: Sequence[str]) -> list[str]:
    names = [name.strip() for value in values for name in value.split(",")]
    if any(not name for name in names):
        raise CliError(f"empty queue name in -Q {','.join(values)!r}")
    return list(dict.fromkeys(names))


def _run_one(options: WorkerOptions, configure_logging: Callable[[], None]) -> int:
    # Handlers first: a signal that arrives while a slow module imports is kept, not lost.
    # Logging after the import: the module may have configured it (then it is left alone).
    with StopControl() as control:
        app = load(options.spec)
        configure_logging()
        try:
            worker = app.worker(
                queues=options.queues or None,
                concurrency=options.concurrency,
                prefetch_buffer=options.prefetch,
            )
            runner = with_beat(worker, app.beat()) if options.beat else worker
            return serve(
                app.kernel,
                runner,
                control,
                grace=options.grace,
                connect_timeout=options.connect_timeout,
                supervisor_pid=_supervisor_pid(),
                end_process=True,
            )
        except (ConfigError, ValueError) as exc:
            raise CliError(str(exc)) from None
        except TaskflowError as exc:
            raise CliRuntimeError(str(exc)) from None
        finally:
            app.close()


def _supervise(options: WorkerOptions, processes: int) -> int:
    try:
        check_module(options.spec)
    except AppLoadError as exc:
        raise CliError(str(exc)) from None
    supervisor = Supervisor(options.child_command(), processes, options.grace)
    with StopControl(extra_wakeups=(signal.SIGCHLD,)) as control:
        return supervisor.run(control)


def _supervisor_pid() -> int | None:
    value = os.environ.get(SUPERVISOR_ENV, "")
    return int(value) if value.isdigit() else None


cli.add_command(beat)
cli.add_command(schedules)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``taskflow`` console script and ``python -m taskflow.cli.main``."""
    cli.main(args=list(argv) if argv is not None else None, prog_name="taskflow")


if __name__ == "__main__":
    main()
