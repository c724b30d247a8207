"""The ``taskflow`` group imports a command's module only when that command runs, so that
``taskflow worker`` starts without the operator commands' imports; an app and its worker
load no module of the beat or of another backend until they are used."""

from __future__ import annotations

import subprocess
import sys

import click

from taskflow.cli.main import cli
from taskflow.cli.operator import LAZY_COMMANDS

# Modules only the operator, admin, gRPC, beat and schedules commands use.
NOT_FOR_A_WORKER = (
    "rich",
    "taskflow.operations",
    "taskflow.admin",
    "taskflow.grpc",
    "taskflow.beat",
    "zoneinfo",
)
# What ``taskflow worker`` needs of the command line.
WORKER_MODULES = (
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


def _loaded_after(code: str) -> list[str]:
    out = subprocess.run(
        [sys.executable, "-c", f"{code}\nimport sys; print(' '.join(sys.modules))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return out.split()


# What a worker of tasks on threads, on Redis, without schedules, does not need.
NOT_FOR_A_THREAD_WORKER = (
    *NOT_FOR_A_WORKER,
    "taskflow.brokers.memory",
    "taskflow.results.memory",
    "pickle",  # the process pool's pipe
    "sysconfig",  # the loader's explanation of a failed import
)

APP_AND_WORKER = """
from taskflow import App
app = App("w", broker="redis://127.0.0.1:1/0")

@app.task
def f() -> None: ...

app.worker(concurrency=2)
"""


def test_an_app_and_its_worker_load_no_beat_and_no_other_backend() -> None:
    loaded = _loaded_after(f"import taskflow.cli.main\n{APP_AND_WORKER}")

    assert [name for name in loaded if name.startswith(NOT_FOR_A_THREAD_WORKER)] == []
    assert "taskflow.brokers.redis" in loaded


def test_the_beat_loads_with_the_first_schedule() -> None:
    loaded = _loaded_after(f"{APP_AND_WORKER}\napp.add_periodic(f, every=60)")

    assert "taskflow.beat.schedule" in loaded
    assert "zoneinfo" in loaded


def test_every_lazy_command_is_found_under_its_name() -> None:
    ctx = click.Context(cli)
    for name in LAZY_COMMANDS:
        command = cli.get_command(ctx, name)
        assert command is not None and command.name == name
    assert set(LAZY_COMMANDS) <= set(cli.list_commands(ctx))
