"""``taskflow worker`` as a real process: loading errors, signals, exit statuses.

The memory broker lives in one process, so the app under test (``apps/fileapp.py``) enqueues
its own tasks when the worker imports it and leaves marks in a temporary directory.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import pytest

from .helpers import pids, run, running, wait_for

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")


def test_a_missing_module_is_one_line_on_stderr_and_exit_status_2(tmp_path: Path) -> None:
    result = run(["worker", "-A", "no_such_module_here"], tmp_path)

    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "taskflow: error: cannot import module 'no_such_module_here': "
        "No module named 'no_such_module_here'"
    ]


def test_a_missing_attribute_is_one_line_and_exit_status_2(tmp_path: Path) -> None:
    result = run(["worker", "-A", "fileapp:nope"], tmp_path)

    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "taskflow: error: module 'fileapp' has no attribute 'nope'"
    ]


def test_an_attribute_that_is_not_an_app_is_exit_status_2(tmp_path: Path) -> None:
    result = run(["worker", "-A", "fileapp:OUT"], tmp_path)

    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "taskflow: error: 'fileapp:OUT' is not a taskflow App (it is a PosixPath)"
    ]


def test_a_module_that_fails_to_import_says_so_in_one_line_with_status_2(tmp_path: Path) -> None:
    result = run(["worker", "-A", "brokenapp"], tmp_path)

    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "taskflow: error: module 'brokenapp' failed to import at brokenapp.py:5: "
        "ModuleNotFoundError: No module named 'taskflow_cli_test_missing_dependency'"
    ]


def test_sigterm_stops_the_worker_gracefully_with_status_0(tmp_path: Path) -> None:
    with running(["worker", "-A", "fileapp", "-c", "2"], tmp_path) as worker:
        wait_for(lambda: pids(tmp_path, "touched") == {worker.pid}, 10, "the worker's task")

        worker.signal(signal.SIGTERM)

        assert worker.wait(10) == 0
    log = worker.stderr
    assert "INFO taskflow.cli: stopping gracefully (SIGTERM)" in log
    assert f":{worker.pid}:" in log.splitlines()[-1]
    assert log.splitlines()[-1].endswith(" stopped")
    assert "Traceback" not in log


def test_a_second_sigint_stops_running_tasks_at_once_with_status_0(tmp_path: Path) -> None:
    linger = {"TASKFLOW_TEST_LINGER": "1"}
    with running(["worker", "-A", "fileapp", "--grace", "60"], tmp_path, env=linger) as worker:
        wait_for(lambda: pids(tmp_path, "lingering") == {worker.pid}, 10, "the long task")

        worker.signal(signal.SIGINT)
        wait_for(lambda: "stopping gracefully (SIGINT)" in worker.stderr, 5, "the graceful stop")
        worker.signal(signal.SIGINT)

        # The task would run for 60 s and the grace is 60 s: only a hard stop ends it now.
        assert worker.wait(10) == 0
    log = worker.stderr
    assert "WARNING taskflow.cli: stopping now (SIGINT)" in log
    assert log.splitlines()[-1].endswith(" stopped")
    assert "Traceback" not in log


def test_taskflow_app_in_the_environment_stands_in_for_dash_a(tmp_path: Path) -> None:
    with running(["worker"], tmp_path, env={"TASKFLOW_APP": "fileapp"}) as worker:
        wait_for(lambda: pids(tmp_path, "touched") == {worker.pid}, 10, "the worker's task")
        worker.signal(signal.SIGTERM)
        assert worker.wait(10) == 0


def test_module_colon_attribute_runs_that_app_under_python_dash_m(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "taskflow.cli.main"]
    with running(
        ["worker", "-A", "fileapp:app", "-Q", "default,other"], tmp_path, command=command
    ) as worker:
        wait_for(lambda: pids(tmp_path, "touched") == {worker.pid}, 10, "the worker's task")
        worker.signal(signal.SIGTERM)
        assert worker.wait(10) == 0
    assert "consuming default,other" in worker.stderr


def test_a_worker_without_an_app_is_a_one_line_usage_error(tmp_path: Path) -> None:
    result = run(["worker"], tmp_path)

    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "taskflow: error: no app given: pass -A MODULE[:ATTR] or set TASKFLOW_APP"
    ]


def test_a_worker_whose_fetch_stage_dies_exits_non_zero(tmp_path: Path) -> None:
    with running(["worker", "-A", "crashapp"], tmp_path) as worker:
        # Not 0: a supervisor must see the crash and start the process again.
        assert worker.wait(15) == 70
    log = worker.stderr
    assert "ERROR taskflow.cli: a worker stage died (RuntimeError: fetch is broken)" in log
    assert " stopped\n" in log


@pytest.mark.parametrize("where", ["root", "taskflow"])
def test_logging_the_app_configured_itself_is_left_alone(tmp_path: Path, where: str) -> None:
    env = {"TASKFLOW_TEST_LOGGING": where}
    with running(["worker", "-A", "loggingapp"], tmp_path, env=env) as worker:
        wait_for(lambda: pids(tmp_path, "touched") == {worker.pid}, 10, "the worker's task")
        worker.signal(signal.SIGTERM)
        assert worker.wait(10) == 0
    user_log = (tmp_path / "user.log").read_text()
    assert "USER INFO taskflow.worker: worker " in user_log
    assert "USER INFO taskflow.cli: stopping gracefully (SIGTERM)" in user_log
    assert user_log.count("stopping gracefully") == 1
    # The command line added no handler of its own: nothing of the worker's on stderr.
    assert "taskflow" not in worker.stderr
