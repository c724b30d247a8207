"""``taskflow worker --pool``, ``--max-tasks-per-child``, ``--max-memory-per-child``."""

from __future__ import annotations

from pathlib import Path

from taskflow.cli.main import WorkerOptions
from tests.cli.helpers import run


def test_supervised_worker_processes_get_the_pool_options() -> None:
    options = WorkerOptions(
        "myapp",
        [],
        4,
        None,
        30.0,
        "info",
        pool="processes",
        max_tasks_per_child=50,
        max_memory_per_child=256.0,
    )
    command = options.child_command()
    assert command[command.index("--pool") + 1] == "processes"
    assert command[command.index("--max-tasks-per-child") + 1] == "50"
    assert command[command.index("--max-memory-per-child") + 1] == "256.0"


def test_an_unknown_pool_is_a_usage_error(tmp_path: Path) -> None:
    result = run(["worker", "-A", "redisapp", "--pool", "forks"], tmp_path)
    assert result.returncode == 2
    assert "Invalid value for '--pool'" in result.stderr


def test_recycling_options_need_the_process_pool(tmp_path: Path) -> None:
    result = run(["worker", "-A", "redisapp", "--max-tasks-per-child", "5"], tmp_path)
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1] == (
        "taskflow: error: max_tasks_per_child and max_memory_per_child need pool='processes'"
    )
