"""Argument parsing of ``taskflow`` (in-process, through click's runner)."""

from __future__ import annotations

import logging
import sys

import pytest
from click.testing import CliRunner

from taskflow import __version__
from taskflow.cli.main import LOG_FORMAT, WorkerOptions, cli, configure_logging


@pytest.fixture
def runner(monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    # Loading an app may put the current directory on sys.path: keep that to this test.
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.delenv("TASKFLOW_APP", raising=False)
    return CliRunner()


def test_version_prints_the_package_version(runner: CliRunner) -> None:
    result = runner.invoke(cli, ["--version"])

    assert result.exit_code == 0
    assert result.output == f"taskflow {__version__}\n"


def test_help_lists_the_worker_command(runner: CliRunner) -> None:
    result = runner.invoke(cli, ["--help"])

    assert result.exit_code == 0
    assert "worker" in result.output


def test_worker_help_documents_its_options(runner: CliRunner) -> None:
    result = runner.invoke(cli, ["worker", "-h"])

    assert result.exit_code == 0
    for option in (
        "-A, --app",
        "-Q, --queues",
        "-c, --concurrency",
        "-P, --processes",
        "--prefetch",
        "--grace",
        "--connect-timeout",
        "--loglevel",
        "TASKFLOW_APP",
    ):
        assert option in result.output


def test_a_worker_without_an_app_is_one_line_and_status_2(runner: CliRunner) -> None:
    result = runner.invoke(cli, ["worker"])

    assert result.exit_code == 2
    assert result.stderr == (
        "taskflow: error: no app given: pass -A MODULE[:ATTR] or set TASKFLOW_APP\n"
    )


def test_a_missing_module_is_one_line_and_status_2(runner: CliRunner) -> None:
    result = runner.invoke(cli, ["worker", "-A", "tf_cli_missing:app"])

    assert result.exit_code == 2
    assert result.stderr == (
        "taskflow: error: cannot import module 'tf_cli_missing': No module named 'tf_cli_missing'\n"
    )


def test_taskflow_app_is_read_from_the_environment(runner: CliRunner) -> None:
    result = runner.invoke(cli, ["worker"], env={"TASKFLOW_APP": "tf_cli_from_env"})

    assert result.exit_code == 2
    assert "cannot import module 'tf_cli_from_env'" in result.stderr


def test_a_malformed_spec_is_a_usage_error(runner: CliRunner) -> None:
    result = runner.invoke(cli, ["worker", "-A", "mod:"])

    assert result.exit_code == 2
    assert result.stderr == (
        "taskflow: error: invalid app spec 'mod:': expected module or module:attribute\n"
    )


@pytest.mark.parametrize(
    "args",
    [
        ["-c", "0"],
        ["-P", "0"],
        ["--prefetch", "-1"],
        ["--grace", "-1"],
        ["--loglevel", "loud"],
        ["--gc-threshold", "-1"],
        ["--gc-threshold", "many"],
        ["--loop", "trio"],
        ["--unknown"],
    ],
)
def test_out_of_range_and_unknown_options_are_usage_errors(
    runner: CliRunner, args: list[str]
) -> None:
    result = runner.invoke(cli, ["worker", "-A", "x", *args])

    assert result.exit_code == 2
    assert "Usage: taskflow worker" in result.stderr


def test_an_empty_queue_name_is_a_usage_error(runner: CliRunner) -> None:
    result = runner.invoke(cli, ["worker", "-A", "x", "-Q", "a,,b"])

    assert result.exit_code == 2
    assert result.stderr == "taskflow: error: empty queue name in -Q 'a,,b'\n"


def test_an_unknown_scheduling_policy_is_a_usage_error(runner: CliRunner) -> None:
    result = runner.invoke(cli, ["worker", "-A", "x", "--scheduling", "fifo"])

    assert result.exit_code == 2
    assert "'fifo' is not one of 'batch', 'normal'" in result.stderr


def test_a_supervised_process_runs_the_same_worker_with_one_process() -> None:
    options = WorkerOptions("pkg.mod:app", ["high", "low"], 4, 2, 12.5, "debug")

    command = options.child_command()

    assert command[:3] == [sys.executable, "-m", "taskflow.cli.main"]
    assert command[3:] == [
        "worker",
        "-A",
        "pkg.mod:app",
        "-c",
        "4",
        "-P",
        "1",
        "--grace",
        "12.5",
        "--connect-timeout",
        "60.0",
        "--loglevel",
        "debug",
        "-Q",
        "high,low",
        "--prefetch",
        "2",
        "--cpu-affinity",
        "off",
        "--scheduling",
        "normal",
    ]


def test_logging_is_compact_on_the_taskflow_logger_and_restored_after(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(logging.getLogger(), "handlers", [])  # pytest's own, set aside
    logger = logging.getLogger("taskflow")
    before = (list(logger.handlers), logger.level, logger.propagate)

    with configure_logging("warning"):
        handler = logger.handlers[-1]
        assert logger.level == logging.WARNING
        assert handler.formatter is not None and handler.formatter._fmt == LOG_FORMAT
        assert logger.propagate is False

    assert (list(logger.handlers), logger.level, logger.propagate) == before


def test_logging_the_program_configured_keeps_its_handlers_and_gets_the_level(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    root = logging.getLogger()
    mine = logging.StreamHandler()
    monkeypatch.setattr(root, "handlers", [mine])
    logger = logging.getLogger("taskflow")
    before = (list(logger.handlers), logger.level, logger.propagate)

    with configure_logging("debug"):
        assert root.handlers == [mine]
        assert (list(logger.handlers), logger.propagate) == before[::2]
        assert logger.level == logging.DEBUG

    assert (list(logger.handlers), logger.level, logger.propagate) == before


def test_a_supervised_process_gets_the_collector_threshold_it_was_given() -> None:
    default = WorkerOptions("pkg.mod:app", [], 4, None, 30.0, "info").child_command()
    assert "--gc-threshold" not in default  # the child's own default is the same

    for given in (0, 2500):
        options = WorkerOptions("pkg.mod:app", [], 4, None, 30.0, "info", gc_threshold=given)
        command = options.child_command()
        assert command[command.index("--gc-threshold") + 1] == str(given)


def test_a_supervised_process_gets_the_scheduling_policy_it_was_given() -> None:
    for given in ("batch", "normal"):
        command = WorkerOptions(
            "pkg.mod:app", [], 4, None, 30.0, "info", scheduling=given
        ).child_command()
        assert command[command.index("--scheduling") + 1] == given


def test_a_supervised_process_gets_the_event_loop_it_was_given() -> None:
    default = WorkerOptions("pkg.mod:app", [], 4, None, 30.0, "info").child_command()
    assert "--loop" not in default  # auto: each process finds uvloop itself

    for given in ("asyncio", "uvloop"):
        command = WorkerOptions(
            "pkg.mod:app", [], 4, None, 30.0, "info", loop=given
        ).child_command()
        assert command[command.index("--loop") + 1] == given


def test_uvloop_asked_for_where_it_is_missing_fails_before_loading_the_app(
    runner: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None)

    result = runner.invoke(cli, ["worker", "-A", "no.such.module", "--loop", "uvloop"])

    assert result.exit_code == 2
    assert result.stderr == (
        "taskflow: error: --loop asks for uvloop, which is not installed: pip install uvloop\n"
    )
