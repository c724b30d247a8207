"""The ``taskflow`` command line: a click group; ``taskflow worker`` runs a worker.

Exit statuses: 0 after a clean stop, 1 when the worker could not run (a broker still
unreachable after ``--connect-timeout``, a child that would not stop), 2 for usage and
configuration errors (a missing module or attribute, a module that fails to import), 70 when
a worker stage died (so that whatever supervises the process restarts it). Errors are one
line on stderr.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO, Any

import click

from .. import __version__
from ..app import App
from ..errors import ConfigError, TaskflowError
from ..worker.foreground import EXIT_FAILED, EXIT_USAGE, serve
from ..worker.signals import StopControl
from .beat import beat, schedules, with_beat
from .loader import AppLoadError, check_module, load_app
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

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class CliError(click.ClickException):
    """A usage or configuration error: one ``taskflow: error: ...`` line, exit status 2."""

    exit_code = EXIT_USAGE

    def show(self, file: IO[Any] | None = None) -> None:
        """Print the message as one line, without click's usage block."""
        message = " ".join(self.format_message().split())
        click.echo(f"taskflow: error: {message}", file=file, err=file is None)


class CliRuntimeError(CliError):
    """The worker could not run (e.g. its broker is unreachable): one line, exit status 1."""

    exit_code = EXIT_FAILED


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


class _CliHandler(logging.StreamHandler[IO[str]]):
    """The handler the command line installs (told apart so it can be replaced)."""


def _user_configured_logging() -> bool:
    """Whether the program put a handler of its own on the root or a ``taskflow`` logger."""
    loggers = [logging.getLogger()] + [
        logger
        for name, logger in logging.Logger.manager.loggerDict.items()
        if isinstance(logger, logging.Logger)
        and (name == "taskflow" or name.startswith("taskflow."))
    ]
    return any(
        not isinstance(handler, _CliHandler) for logger in loggers for handler in logger.handlers
    )


@contextmanager
def configure_logging(level: str) -> Iterator[None]:
    """Configure logging now (see :func:`logging_setup`); undo it afterwards."""
    with logging_setup(level) as configure:
        configure()
        yield


@contextmanager
def logging_setup(level: str) -> Iterator[Callable[[], None]]:
    """Yield a function that sets up logging for a command; undo what it did on exit.

    The function logs the ``taskflow`` logger to stderr at ``level`` in the compact format,
    unless the program configured logging itself (a handler on the root logger or on a
    ``taskflow`` logger): then its handlers get the lines, and ``level`` is set only on a
    ``taskflow`` logger that has none. Commands call it once the app module was imported
    (it may configure logging) and keep it until the app is closed (whose last lines,
    such as "stopped", are logged then).
    """
    logger = logging.getLogger("taskflow")
    saved_level, saved_propagate = logger.level, logger.propagate
    added: list[logging.Handler] = []
    removed: list[logging.Handler] = []

    def configure() -> None:
        if _user_configured_logging():
            if logger.level == logging.NOTSET:
                logger.setLevel(level.upper())
            return
        handler = _CliHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        for old in [h for h in logger.handlers if isinstance(h, _CliHandler)]:
            logger.removeHandler(old)
            removed.append(old)
        logger.addHandler(handler)
        added.append(handler)
        logger.setLevel(level.upper())
        # Our handler prints every line once; a root handler would print it a second time.
        logger.propagate = False

    try:
        yield configure
    finally:
        for handler in added:
            logger.removeHandler(handler)
        for handler in removed:
            logger.addHandler(handler)
        logger.setLevel(saved_level)
        logger.propagate = saved_propagate


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


def _load(spec: str) -> App:
    try:
        return load_app(spec)
    except AppLoadError as exc:
        raise CliError(str(exc)) from None


def _run_one(options: WorkerOptions, configure_logging: Callable[[], None]) -> int:
    # Handlers first: a signal that arrives while a slow module imports is kept, not lost.
    # Logging after the import: the module may have configured it (then it is left alone).
    with StopControl() as control:
        app = _load(options.spec)
        configure_logging()
        try:
            worker = app.worker(
                queues=options.queues or None,
                concurrency=options.concurrency,
                prefetch_buffer=options.prefetch,
            )
            runner = with_beat(worker, app.beat()) if options.beat else worker
            return serve(
                app,
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
