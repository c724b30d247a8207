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
import socket
import sys
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass

import click

from .. import __version__
from ..app import App
from ..errors import ConfigError, TaskflowError
from ..kernel import LOOP_CHOICES, LOOP_ENV, loop_kind
from ..worker.affinity import AFFINITY_CHOICES, check_choice, command_line_default
from ..worker.foreground import YOUNG_THRESHOLD, Runner, serve
from ..worker.scheduling import SCHEDULING_CHOICES
from ..worker.scheduling import command_line_default as scheduling_default
from ..worker.signals import StopControl
from .common import (
    LOG_FORMAT,
    CliError,
    CliRuntimeError,
    configure_logging,
    load,
    logging_setup,
)
from .loader import AppLoadError, check_module
from .metrics_options import MetricsServing, metrics_options, metrics_serving
from .operator import LazyGroup
from .options import (
    APP_ENV,
    app_option,
    connect_timeout_option,
    log_format_option,
    loglevel_option,
)
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
    log_format: str = "text"
    metrics: MetricsServing | None = None
    pool: str = "threads"
    max_tasks_per_child: int | None = None
    max_memory_per_child: float | None = None
    cpu_affinity: str = "off"
    gc_threshold: int = YOUNG_THRESHOLD
    loop: str = "auto"
    scheduling: str = "normal"

    def child_command(self) -> list[str]:
        """The command a supervised worker process runs: this command with ``-P 1``."""
        return [sys.executable, "-m", "taskflow.cli.main", *self.child_args()]

    def child_args(self) -> list[str]:
        """The arguments of :meth:`child_command` after the program: ``worker ...``."""
        command = ["worker", "-A", self.spec]
        command += ["-c", str(self.concurrency), "-P", "1", "--grace", repr(self.grace)]
        command += ["--connect-timeout", repr(self.connect_timeout)]
        command += ["--loglevel", self.loglevel]
        if self.log_format != "text":
            command += ["--log-format", self.log_format]
        if self.metrics is not None:
            command += ["--metrics-port", "0"]  # a loopback port; the supervisor serves
        if self.queues:
            command += ["-Q", ",".join(self.queues)]
        if self.prefetch is not None:
            command += ["--prefetch", str(self.prefetch)]
        if self.beat:
            command += ["--beat"]
        return command + self._pool_args()

    def _pool_args(self) -> list[str]:
        """The pool's options and the process's tuning, as given (defaults left out, but for
        the CPU affinity and the scheduling policy, which are always given)."""
        command = [] if self.pool == "threads" else ["--pool", self.pool]
        if self.max_tasks_per_child is not None:
            command += ["--max-tasks-per-child", str(self.max_tasks_per_child)]
        if self.max_memory_per_child is not None:
            command += ["--max-memory-per-child", repr(self.max_memory_per_child)]
        # Always given: a child (-P 1) left to choose would choose for one process. The
        # scheduling policy too, as the supervisor chose it.
        command += ["--cpu-affinity", self.cpu_affinity]
        command += ["--scheduling", self.scheduling]
        if self.gc_threshold != YOUNG_THRESHOLD:
            command += ["--gc-threshold", str(self.gc_threshold)]
        if self.loop != "auto":
            command += ["--loop", self.loop]
        return command


@click.group(
    name="taskflow", cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]}
)
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
    help=(
        "Messages held beyond free slots (default: concurrency // 2; 2 x concurrency on "
        "SQLite, and while bodies run under 20 ms on average: then at least 64 on NATS)."
    ),
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
@log_format_option
@metrics_options
@click.option("--beat", "run_beat", is_flag=True, help="Also run a beat in each worker process.")
@click.option(
    "--pool",
    type=click.Choice(["threads", "processes"], case_sensitive=False),
    default="threads",
    show_default=True,
    help="Where sync task bodies run: threads, or child processes (hard time_limit).",
)
@click.option(
    "--max-tasks-per-child",
    "max_tasks_per_child",
    type=click.IntRange(min=1),
    default=None,
    metavar="N",
    help="With --pool processes: replace a child after N tasks.",
)
@click.option(
    "--max-memory-per-child",
    "max_memory_per_child",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    metavar="MB",
    help="With --pool processes: replace a child whose resident memory exceeds MB after a task.",
)
@click.option(
    "--cpu-affinity",
    "cpu_affinity",
    type=click.Choice(list(AFFINITY_CHOICES), case_sensitive=False),
    default=None,
    envvar="TASKFLOW_CPU_AFFINITY",
    help="auto: keep each worker process's threads on one CPU of its own (thread pool "
    "only; faster sync bodies, see docs/guide.md).  [default: auto with -P N where N is "
    "at least the CPUs the worker may use, else off]",
)
@click.option(
    "--scheduling",
    "scheduling",
    type=click.Choice(list(SCHEDULING_CHOICES), case_sensitive=False),
    default=None,
    envvar="TASKFLOW_SCHEDULING",
    help="batch: run the worker's threads under the system's batch scheduling policy "
    "(SCHED_BATCH: woken threads do not pre-empt running ones; faster sync bodies, see "
    "docs/guide.md); normal: the system's default.  [default: batch where the system "
    "has it (Linux), else normal]",
)
@click.option(
    "--gc-threshold",
    "gc_threshold",
    type=click.IntRange(min=0),
    default=YOUNG_THRESHOLD,
    show_default=True,
    envvar="TASKFLOW_GC_THRESHOLD",
    metavar="N",
    help="While serving, the garbage collector looks at its youngest objects once N more "
    "were made than freed (Python's default: 700); 0: leave the collector as the app set "
    "it (see docs/guide.md).",
)
@click.option(
    "--loop",
    "event_loop",
    type=click.Choice(list(LOOP_CHOICES), case_sensitive=False),
    default="auto",
    show_default=True,
    envvar=LOOP_ENV,
    help="The event loop: auto is uvloop where it is installed, else asyncio's own "
    "(see docs/guide.md).",
)
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
    log_format: str,
    metrics_port: int | None,
    metrics_host: str,
    metrics_token_file: str | None,
    metrics_no_auth: bool,
    metrics_tls_cert: str | None,
    metrics_tls_key: str | None,
    run_beat: bool,
    pool: str,
    max_tasks_per_child: int | None,
    max_memory_per_child: float | None,
    cpu_affinity: str | None,
    scheduling: str | None,
    gc_threshold: int,
    event_loop: str,
) -> None:
    """Run a worker in the foreground until SIGTERM or SIGINT (twice: stop now)."""
    if not app_spec:
        raise CliError(f"no app given: pass -A MODULE[:ATTR] or set {APP_ENV}")
    try:
        loop_kind(event_loop)  # uvloop asked for and not installed: said before anything starts
    except ConfigError as exc:
        raise CliError(str(exc)) from None
    options = WorkerOptions(
        app_spec,
        _split_queues(queues),
        concurrency,
        prefetch,
        grace,
        loglevel.lower(),
        run_beat,
        connect_timeout,
        log_format.lower(),
        metrics_serving(
            metrics_port,
            metrics_host,
            metrics_token_file,
            metrics_no_auth,
            metrics_tls_cert,
            metrics_tls_key,
        ),
        pool.lower(),
        max_tasks_per_child,
        max_memory_per_child,
        _affinity(cpu_affinity, pool, processes),
        gc_threshold,
        event_loop.lower(),
        scheduling.lower() if scheduling else scheduling_default(),
    )
    code = _supervise(options, processes) if processes > 1 else _run_one(options)
    ctx.exit(code)


def _affinity(choice: str | None, pool: str, processes: int) -> str:
    if choice is None:
        return command_line_default(processes, pool)
    try:
        return check_choice(choice, pool.lower(), "--cpu-affinity")
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None


def _split_queues(values: Sequence[str]) -> list[str]:
    names = [name.strip() for value in values for name in value.split(",")]
    if any(not name for name in names):
        raise CliError(f"empty queue name in -Q {','.join(values)!r}")
    return list(dict.fromkeys(names))


def _worker_name() -> str:
    """The worker's name, also the ``worker`` of its JSON log lines."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def _run_one(options: WorkerOptions) -> int:
    # Handlers first: a signal that arrives while a slow module imports is kept, not lost.
    # Metrics before it, so that what the module sends is counted too.
    # Logging after the import: the module may have configured it (then it is left alone).
    name = _worker_name()
    with (
        logging_setup(options.loglevel, options.log_format, name) as configure_logging,
        StopControl() as control,
        _metrics(options.metrics),
    ):
        app = load(options.spec)
        configure_logging()
        _warn_if_in_process(app)
        try:
            app.kernel.loop.use(options.loop)
            worker = app.worker(
                queues=options.queues or None,
                concurrency=options.concurrency,
                prefetch_buffer=options.prefetch,
                name=name,
                pool=options.pool,
                max_tasks_per_child=options.max_tasks_per_child,
                max_memory_per_child=options.max_memory_per_child,
                app_path=options.spec,
            )
            runner: Runner = worker
            if options.beat:
                from .beat import with_beat  # the beat's modules only when it runs here

                runner = with_beat(worker, app.beat())
            return serve(
                app.kernel,
                runner,
                control,
                grace=options.grace,
                connect_timeout=options.connect_timeout,
                supervisor_pid=_supervisor_pid(),
                end_process=True,
                cpu_affinity=options.cpu_affinity,
                scheduling=options.scheduling,
                gc_threshold=options.gc_threshold,
            )
        except (ConfigError, ValueError) as exc:
            raise CliError(str(exc)) from None
        except TaskflowError as exc:
            raise CliRuntimeError(str(exc)) from None
        finally:
            app.close()


def _warn_if_in_process(app: App) -> None:
    """A worker on ``memory://`` serves only its own process: say so when it starts."""
    if app.kernel.broker.url.split("://", 1)[0].lower() == "memory":
        logging.getLogger("taskflow.cli").warning(
            "the broker is memory:// (in this process only): producers in other processes "
            "cannot send to this worker; use sqlite:///path.db or a server (redis://, nats://)"
        )


def _supervise(options: WorkerOptions, processes: int) -> int:
    try:
        check_module(options.spec)
    except AppLoadError as exc:
        raise CliError(str(exc)) from None
    with ExitStack() as supervising:
        # The supervisor imports no user code: its logging is set up at once.
        supervising.enter_context(logging_setup(options.loglevel, options.log_format, None))()
        env = supervising.enter_context(_metrics(options.metrics, supervisor=True))
        control = supervising.enter_context(StopControl(extra_wakeups=(signal.SIGCHLD,)))

        def run_forked() -> None:
            # In a forked worker process: drop what the supervisor set up (its logging, its
            # signal pipe), then run the worker as the child command would.
            supervising.close()
            main(options.child_args())

        supervisor = Supervisor(
            options.child_command(), processes, options.grace, env=env, fork=run_forked
        )
        return supervisor.run(control)


_NEEDS_OTEL = "--metrics-port needs the otel extra: pip install 'taskflow-queue[otel]'"


@contextmanager
def _metrics(
    serving: MetricsServing | None, *, supervisor: bool = False
) -> Iterator[Mapping[str, str] | None]:
    """Serve metrics as ``serving`` says (nothing without it): a worker's own, or with
    ``supervisor`` the merged ones of its processes, yielding the environment they need."""
    if serving is None:
        yield None
        return
    try:
        # the otel extra, loaded only when asked for
        from .metrics import process_metrics, supervisor_metrics
    except ImportError:
        raise CliError(_NEEDS_OTEL) from None
    start: Callable[[MetricsServing], AbstractContextManager[Mapping[str, str] | None]] = (
        supervisor_metrics if supervisor else process_metrics
    )
    with ExitStack() as stack:
        try:
            env = stack.enter_context(start(serving))
        except ConfigError as exc:  # the TLS files
            raise CliError(str(exc)) from None
        except OSError as exc:
            where = f"--metrics-port {serving.port}"
            raise CliRuntimeError(f"{where}: {exc.strerror or exc}") from None
        yield env


def _supervisor_pid() -> int | None:
    value = os.environ.get(SUPERVISOR_ENV, "")
    return int(value) if value.isdigit() else None


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``taskflow`` console script and ``python -m taskflow.cli.main``."""
    cli.main(args=list(argv) if argv is not None else None, prog_name="taskflow")


if __name__ == "__main__":
    main()
