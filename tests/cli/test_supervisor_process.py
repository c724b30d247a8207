"""``taskflow worker -P N``: a supervisor of N worker processes, as real processes.

Each worker process imports ``apps/fileapp.py``, which leaves ``imported-<pid>`` behind, so
the test sees which processes ran without asking the supervisor.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import pytest

from .helpers import alive, pids, run, running, wait_for

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")


def test_two_processes_run_and_one_killed_with_sigkill_is_restarted(tmp_path: Path) -> None:
    with running(["worker", "-A", "fileapp", "-P", "2", "-c", "2"], tmp_path) as supervisor:
        wait_for(lambda: len(pids(tmp_path, "touched")) == 2, 10, "two worker processes")
        first = pids(tmp_path, "imported")
        victim = min(first)

        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: len(pids(tmp_path, "touched")) == 3, 10, "a replacement process")

        supervisor.signal(signal.SIGTERM)
        assert supervisor.wait(10) == 0
    everyone = pids(tmp_path, "imported")
    assert len(everyone) == 3 and first < everyone
    assert not [pid for pid in everyone if alive(pid)]
    log = supervisor.stderr
    assert f"(pid {victim}) was killed by SIGKILL; restarting in" in log
    assert log.count(" stopped\n") == 2
    assert "Traceback" not in log


def test_worker_processes_are_forked_and_set_up_as_started_ones(tmp_path: Path) -> None:
    with running(["worker", "-A", "fileapp", "-P", "2"], tmp_path) as supervisor:
        wait_for(lambda: len(pids(tmp_path, "touched")) == 2, 10, "two worker processes")
        children = pids(tmp_path, "imported")
        setups = [json.loads((tmp_path / f"setup-{pid}").read_text()) for pid in children]

        supervisor.signal(signal.SIGTERM)
        assert supervisor.wait(10) == 0
    log = supervisor.stderr
    assert "forked worker process 1" in log and "forked worker process 2" in log
    assert supervisor.pid not in children  # the app's module is imported by workers only
    assert sorted(setup.pop("index") for setup in setups) == ["1", "2"]
    assert setups == 2 * [
        {
            "supervisor": str(supervisor.pid),
            "test_dir": str(tmp_path),
            "own_group": True,
            "stdin_is_devnull": True,
            "sigchld_default": True,  # the supervisor's handler is gone
            "blocked": [],  # what the supervisor blocks while forking is unblocked
        }
    ]
    assert log.count(" stopped\n") == 2  # once each: the supervisor's handler is gone too


def test_a_stop_as_the_workers_start_reaches_them(tmp_path: Path) -> None:
    args = ["worker", "-A", "fileapp", "-P", "2", "--grace", "1"]
    with running(args, tmp_path) as supervisor:
        wait_for(lambda: "forked worker process 2" in supervisor.stderr, 10, "the second fork")
        supervisor.signal(signal.SIGTERM)

        # A stop lost by a starting worker would hold the supervisor until it kills the
        # worker, 11s (grace + KILL_AFTER) later.
        assert supervisor.wait(8) == 0
    assert "restarting" not in supervisor.stderr
    assert "killing it" not in supervisor.stderr


def test_a_second_sigint_reaches_the_workers_as_a_hard_stop(tmp_path: Path) -> None:
    args = ["worker", "-A", "fileapp", "-P", "2", "--grace", "60"]
    with running(args, tmp_path, env={"TASKFLOW_TEST_LINGER": "1"}) as supervisor:
        wait_for(lambda: len(pids(tmp_path, "lingering")) == 2, 10, "two long tasks")

        supervisor.signal(signal.SIGINT)
        wait_for(
            lambda: supervisor.stderr.count("stopping gracefully (SIGTERM)") == 2,
            5,
            "both workers to stop gracefully",
        )
        supervisor.signal(signal.SIGINT)

        assert supervisor.wait(10) == 0
    log = supervisor.stderr
    assert log.count("WARNING taskflow.cli: stopping now (SIGINT)") == 2
    assert not [pid for pid in pids(tmp_path, "imported") if alive(pid)]


def test_workers_stop_by_themselves_when_the_supervisor_is_killed(tmp_path: Path) -> None:
    with running(["worker", "-A", "fileapp", "-P", "2"], tmp_path) as supervisor:
        wait_for(lambda: len(pids(tmp_path, "touched")) == 2, 10, "two worker processes")

        supervisor.signal(signal.SIGKILL)
        supervisor.wait(5)

        children = pids(tmp_path, "imported")
        wait_for(
            lambda: not [pid for pid in children if alive(pid)], 10, "the orphaned workers to stop"
        )
    assert supervisor.stderr.count("is gone; stopping") == 2


def test_a_missing_module_fails_once_in_the_supervisor(tmp_path: Path) -> None:
    result = run(["worker", "-A", "no_such_module_here", "-P", "2"], tmp_path)

    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "taskflow: error: cannot import module 'no_such_module_here': "
        "No module named 'no_such_module_here'"
    ]
    assert not pids(tmp_path, "imported")


def test_a_missing_attribute_stops_the_supervisor_with_status_2(tmp_path: Path) -> None:
    result = run(["worker", "-A", "fileapp:nope", "-P", "2"], tmp_path)

    assert result.returncode == 2
    assert "taskflow: error: module 'fileapp' has no attribute 'nope'" in result.stderr
    assert "configuration error" in result.stderr
    assert "restarting" not in result.stderr
    assert "Traceback" not in result.stderr
