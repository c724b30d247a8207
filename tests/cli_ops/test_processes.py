"""``taskflow`` operator commands as real processes: progress bars only on a terminal, the
live event tail, Ctrl-C, and a backend that is down."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from taskflow.testing import drain
from tests.cli_ops.apps.opsapp import OTHER, WORK
from tests.cli_ops.conftest import APP_MODULE, Ops
from tests.integration.redis_helpers import ROOT

DEADLINE = 30.0


def _env(url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("TTY_COMPATIBLE", "FORCE_COLOR")}
    env.update(TASKFLOW_BROKER_URL=url, TASKFLOW_APP=APP_MODULE, PYTHONPATH=str(ROOT), COLUMNS="80")
    env.update(extra)
    return env


def _taskflow(url: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "taskflow.cli.main", *args]
    return subprocess.run(
        command,
        env=_env(url, **env),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@contextmanager
def _running(url: str, *args: str, **env: str) -> Iterator[subprocess.Popen[str]]:
    """``taskflow ARGS`` as a process with its output piped; killed if still running at
    the end, its pipes closed."""
    command = [sys.executable, "-m", "taskflow.cli.main", *args]
    with subprocess.Popen(
        command,
        env=_env(url, **env),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.communicate(timeout=DEADLINE)


def _dead_letters(ops: Ops, count: int) -> None:
    app = ops.app()
    for n in range(count):
        app.send_task("ops.boom", [n])
    assert drain(app, [WORK]) == count


def test_piped_output_has_no_progress_bar(sqlite_ops: Ops) -> None:
    _dead_letters(sqlite_ops, 3)

    piped = _taskflow(sqlite_ops.url, "dlq", "replay", "--apply")

    assert piped.returncode == 0, piped.stderr
    assert piped.stdout == "matched 3, replayed 3, skipped 0\n"
    assert "\x1b" not in piped.stdout


def test_a_terminal_gets_a_progress_bar(sqlite_ops: Ops) -> None:
    _dead_letters(sqlite_ops, 3)

    shown = _taskflow(sqlite_ops.url, "dlq", "replay", "--apply", TTY_COMPATIBLE="1")

    assert shown.returncode == 0, shown.stderr
    assert "replaying" in shown.stdout
    assert "3/3" in shown.stdout
    assert "matched 3, replayed 3, skipped 0" in shown.stdout


def test_json_on_a_terminal_has_no_progress_bar(sqlite_ops: Ops) -> None:
    _dead_letters(sqlite_ops, 2)
    result = _taskflow(sqlite_ops.url, "dlq", "replay", "--apply", "--json", TTY_COMPATIBLE="1")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["replayed"] == 2


def test_watch_redraws_in_place_on_a_terminal_and_stops_on_ctrl_c(sqlite_ops: Ops) -> None:
    sqlite_ops.app().send_task("ops.add", [1, 2])
    with _running(sqlite_ops.url, "queues", "--watch", "0.05", TTY_COMPATIBLE="1") as proc:
        assert proc.stdout is not None
        # The first frame is drawn at once; the redraws move the cursor back up.
        seen = ""
        deadline = time.monotonic() + DEADLINE
        while "\x1b[" not in seen or seen.count(WORK) < 2:
            assert time.monotonic() < deadline, seen
            seen += os.read(proc.stdout.fileno(), 4096).decode()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=DEADLINE)
    assert proc.returncode == 0, err
    assert "Traceback" not in err


def test_events_tails_finish_events_of_other_processes(redis_ops: Ops) -> None:
    app = redis_ops.app()
    with _running(redis_ops.url, "events", "--json", "--task", "ops.add", "--count", "2") as proc:
        # Workers publish once they notice a listener (within about a second): keep
        # running tasks until the tail has printed two events.
        deadline = time.monotonic() + DEADLINE
        while proc.poll() is None:
            assert time.monotonic() < deadline, "no events reached the tail"
            app.send_task("ops.add", [1, 2])
            app.send_task("ops.other")
            drain(app, [WORK, OTHER])
        out, err = proc.communicate(timeout=DEADLINE)
    assert proc.returncode == 0, err
    events = [json.loads(line) for line in out.splitlines()]
    assert len(events) == 2
    assert {(e["task"], e["status"], e["queue"]) for e in events} == {
        ("ops.add", "succeeded", WORK)
    }
    assert all("result" not in e for e in events)


def test_events_stops_cleanly_on_ctrl_c(redis_ops: Ops) -> None:
    with _running(redis_ops.url, "events") as proc:
        assert proc.stderr is not None
        assert "listening" in proc.stderr.readline()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=DEADLINE)
    assert proc.returncode == 0, err
    assert "Traceback" not in err


def test_apply_against_a_backend_that_is_down_fails_in_one_line(tmp_path: Path) -> None:
    url = "redis://:s3cret@127.0.0.1:1/0"

    result = _taskflow(url, "purge", WORK, "--apply")

    assert result.returncode == 1
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("taskflow: error: ")
    assert "redis://:***@127.0.0.1:1/0" in lines[0]
    assert "s3cret" not in result.stderr


def test_no_app_is_a_usage_error(tmp_path: Path) -> None:
    env = _env("memory://")
    del env["TASKFLOW_APP"]
    result = subprocess.run(
        [sys.executable, "-m", "taskflow.cli.main", "queues"],
        env=env,
        cwd=tmp_path,
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "taskflow: error: no app given: pass -A MODULE[:ATTR] or set TASKFLOW_APP"
    )
