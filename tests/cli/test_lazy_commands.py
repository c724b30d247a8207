"""The ``taskflow`` group imports a command's module only when that command runs, so that
``taskflow worker`` starts without the operator commands' imports."""

from __future__ import annotations

import subprocess
import sys

import click

from taskflow.cli.main import cli
from taskflow.cli.operator import LAZY_COMMANDS

# Modules only the operator, admin and gRPC commands use.
NOT_FOR_A_WORKER = ("rich", "taskflow.operations", "taskflow.admin", "taskflow.grpc")
# What ``taskflow worker`` needs of the command line.
WORKER_MODULES = (
    "beat",
    "common",
    "loader",
    "main",
    "metrics_options",
    "operator",
    "options",
    "supervisor",
)


def test_the_command_line_imports_no_operator_command_until_one_runs() -> None:
    code = "import sys, taskflow.cli.main; print(' '.join(sys.modules))"
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()

    assert [name for name in loaded if name.startswith(NOT_FOR_A_WORKER)] == []
    commands = sorted(name for name in loaded if name.startswith("taskflow.cli."))
    assert commands == [f"taskflow.cli.{name}" for name in WORKER_MODULES]


def test_every_lazy_command_is_found_under_its_name() -> None:
    ctx = click.Context(cli)
    for name in LAZY_COMMANDS:
        command = cli.get_command(ctx, name)
        assert command is not None and command.name == name
    assert set(LAZY_COMMANDS) <= set(cli.list_commands(ctx))
