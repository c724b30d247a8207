"""``--log-format json`` / ``TASKFLOW_LOG_FORMAT``: a real worker process's stderr, parsed."""

from __future__ import annotations

import json
import logging
import signal
import socket
import sys
from pathlib import Path
from typing import Any

import pytest

from taskflow.context import TaskContext, reset_current, set_current
from taskflow.logs import JsonFormatter, TaskContextFilter
from tests.cli.helpers import ROOT, pids, running, wait_for

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")

APPS = Path(__file__).parent / "apps"
SECRET = "s3cr3t-payload-value-7f1d"


def _env(**extra: str) -> dict[str, str]:
    return {"PYTHONPATH": f"{APPS}:{ROOT}", "LOGAPP_SECRET": SECRET, **extra}


def _run_worker(tmp_path: Path, args: list[str], env: dict[str, str]) -> str:
    with running(["worker", "-A", "logapp", "-c", "2", *args], tmp_path, env=env) as worker:
        wait_for(lambda: pids(tmp_path, "done") == {worker.pid}, 30, "the task to run")
        wait_for(lambda: "succeeded" in worker.stderr, 30, "the task's log line")
        worker.signal(signal.SIGTERM)
        assert worker.wait(30) == 0
        return worker.stderr


def _objects(stderr: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stderr.splitlines()]


@pytest.mark.parametrize(
    ("args", "env"),
    [(["--log-format", "json"], {}), ([], {"TASKFLOW_LOG_FORMAT": "json"})],
    ids=["flag", "environment"],
)
def test_every_line_is_one_json_object_with_the_task_inside_tasks(
    tmp_path: Path, args: list[str], env: dict[str, str]
) -> None:
    stderr = _run_worker(tmp_path, args, _env(**env))

    lines = _objects(stderr)  # fails on any line that is not one JSON object
    assert lines
    for line in lines:
        assert {"timestamp", "level", "logger", "message", "worker"} <= line.keys()
        assert line["worker"].split(":")[1] == str(pids(tmp_path, "done").pop())
    own = [line for line in lines if line["message"] == "working on it"]
    assert len(own) == 2
    assert {line["logger"] for line in own} == {"logapp"}
    assert {line["task_name"] for line in own} == {"logapp.work"}
    assert len({line["task_id"] for line in own}) == 2
    assert any("task_id" not in line for line in lines)  # the worker's own, outside tasks
    assert any(line["logger"].startswith("taskflow") for line in lines)
    assert any("failed" in line["message"] and "boom" in line["message"] for line in lines)


def test_no_payload_value_appears_in_any_line(tmp_path: Path) -> None:
    stderr = _run_worker(tmp_path, ["--log-format", "json", "--loglevel", "debug"], _env())

    assert _objects(stderr)
    assert SECRET not in stderr


def test_text_stays_the_default(tmp_path: Path) -> None:
    stderr = _run_worker(tmp_path, [], _env())

    lines = stderr.splitlines()
    assert lines
    assert not any(line.startswith("{") for line in lines)
    assert any(" INFO taskflow" in line for line in lines)


def test_a_programs_own_logging_configuration_is_left_alone(tmp_path: Path) -> None:
    stderr = _run_worker(tmp_path, ["--log-format", "json"], _env(LOGAPP_BASIC_CONFIG="1"))

    lines = stderr.splitlines()
    assert "USER INFO logapp working on it" in lines
    assert not any(line.startswith("{") for line in lines)


def _record(message: str, *args: object) -> logging.LogRecord:
    return logging.LogRecord("logapp", logging.WARNING, __file__, 1, message, args, None)


def test_the_filter_and_formatter_work_in_a_programs_own_configuration() -> None:
    formatter, task_filter = JsonFormatter(worker_id="node-1"), TaskContextFilter()
    record = _record("hello %s", "there")
    record.request = "r-1"

    token = set_current(TaskContext(id="t-1", name="pkg.task"))
    try:
        assert task_filter.filter(record)
    finally:
        reset_current(token)
    line = json.loads(formatter.format(record))

    assert line["message"] == "hello there"
    assert (line["task_id"], line["task_name"], line["worker"]) == ("t-1", "pkg.task", "node-1")
    assert line["level"] == "WARNING" and line["logger"] == "logapp"
    assert line["request"] == "r-1"
    assert line["timestamp"].endswith("+00:00")


def test_an_exception_is_one_field_of_the_same_line() -> None:
    try:
        raise ValueError("bad")
    except ValueError:
        record = _record("failed")
        record.exc_info = sys.exc_info()
    record_filter = TaskContextFilter()
    record_filter.filter(record)

    text = JsonFormatter().format(record)

    assert "\n" not in text
    line = json.loads(text)
    assert "ValueError: bad" in line["exception"]
    assert "task_id" not in line


def test_the_processes_of_a_supervised_worker_log_json_too(tmp_path: Path) -> None:
    args = ["worker", "-A", "logapp", "-P", "2", "--log-format", "json"]
    with running(args, tmp_path, env=_env()) as supervisor:
        wait_for(lambda: len(pids(tmp_path, "done")) == 2, 30, "both processes' tasks")
        wait_for(lambda: supervisor.stderr.count("succeeded") == 2, 30, "their log lines")
        supervisor.signal(signal.SIGTERM)
        assert supervisor.wait(30) == 0
        lines = _objects(supervisor.stderr)

    workers = {line["worker"] for line in lines if line.get("task_name") == "logapp.work"}
    assert {int(worker.split(":")[1]) for worker in workers} == pids(tmp_path, "done")


def test_beat_logs_json_too(tmp_path: Path) -> None:
    with running(["beat", "-A", "logapp", "--log-format", "json"], tmp_path, env=_env()) as beat:
        wait_for(lambda: " leads" in beat.stderr, 30, "the beat to lead")
        beat.signal(signal.SIGTERM)
        assert beat.wait(30) == 0
        lines = _objects(beat.stderr)

    assert any(line["logger"] == "taskflow.beat" for line in lines)
    assert {line["worker"] for line in lines} == {f"{socket.gethostname()}:{beat.pid}"}
