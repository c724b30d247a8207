"""What a body logs in a child process of the process pool reaches the worker's own logging
configuration, once, with the id and name of the task that logged it (real processes)."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from taskflow import App, codec
from taskflow.errors import TaskFailed
from taskflow.logs import TaskContextFilter
from tests.cli.helpers import running, wait_for
from tests.integration.redis_helpers import drop_prefix, shared_url

from .conftest import APP_PATH, PoolApp, driven_child

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX processes")


class _Keep(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []
        self.addFilter(TaskContextFilter())

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def captured() -> Iterator[list[logging.LogRecord]]:
    """The records the test process's ``pool.body`` logger handles, at INFO and above (set
    before the worker starts: a child takes the worker's levels when it starts)."""
    logger = logging.getLogger("pool.body")
    handler, saved = _Keep(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield handler.records
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved)


def test_a_body_in_a_child_logs_through_the_workers_handlers_with_its_task_id(
    pool_app: PoolApp, captured: list[logging.LogRecord]
) -> None:
    app, tasks = pool_app
    with app.worker(concurrency=1, pool="processes", app_path=APP_PATH):
        result = tasks["chatty"].delay("o-17")
        child = result.get(timeout=10)
        # Handled before the outcome was: no waiting for the lines here.
        lines = [(r.levelname, r.getMessage()) for r in captured]

    # The DEBUG line stays out: the child has the worker's level for the logger.
    assert lines == [("INFO", "charging o-17"), ("ERROR", "retrying o-17")]
    info, error = captured
    assert info.process == child != os.getpid()
    assert (info.task_id, info.task_name) == (result.id, "pool.chatty")  # type: ignore[attr-defined]
    assert info.order == "o-17"  # type: ignore[attr-defined]  # extra= is kept
    assert error.exc_text is not None
    assert "ValueError: card declined" in error.exc_text
    assert 'raise ValueError("card declined")' in error.exc_text


def test_a_line_a_child_logs_while_idle_arrives_without_another_task(
    pool_app: PoolApp, captured: list[logging.LogRecord]
) -> None:
    app, tasks = pool_app
    with app.worker(concurrency=1, pool="processes", app_path=APP_PATH):
        child = tasks["log_later"].delay("from a thread of the child").get(timeout=10)
        wait_for(lambda: bool(captured), 10, "the line a thread of the child logged")

    (record,) = captured
    assert (record.getMessage(), record.process) == ("from a thread of the child", child)
    assert record.task_id is None  # type: ignore[attr-defined]  # not logged by a body


def test_what_a_body_logged_or_printed_before_its_time_limit_is_not_lost(
    pool_app: PoolApp,
    captured: list[logging.LogRecord],
    capfd: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Standard output here is a file, not a terminal (as under systemd or docker): a child
    # buffering it by blocks would lose the printed line when the time limit kills it.
    monkeypatch.delenv("PYTHONUNBUFFERED", raising=False)  # as most deployments run
    app, tasks = pool_app
    with app.worker(concurrency=1, pool="processes", app_path=APP_PATH):
        result = tasks["log_then_block"].delay(str(tmp_path), 30.0)
        with pytest.raises(TaskFailed) as caught:
            result.get(timeout=10)

    assert caught.value.exc_type == "taskflow.errors.TaskTimeout"
    assert [(r.getMessage(), r.task_id) for r in captured] == [  # type: ignore[attr-defined]
        ("blocking for 30.0s", result.id)
    ]
    assert "printed before blocking for 30.0s\n" in capfd.readouterr().out


def test_a_child_sends_each_line_once_with_the_workers_levels_whatever_its_app_configured() -> None:
    # The child's side, driven directly, with an app module that calls
    # logging.basicConfig(level=DEBUG) when imported: the child writes nothing itself, and
    # the worker's root level (WARNING here) decides what is sent.
    levels = {"root": logging.WARNING, "levels": {}, "disabled": []}
    with driven_child(stderr=subprocess.PIPE) as child:
        child.start("tests.pool.logapp:app", rss=False, logging=levels)
        (kind, value), _, logged = child.run("logapp.say", "hi")
        assert (kind, codec.loads(value), logged) == ("ok", 2, 2)
        sent = [child.logged(), child.logged()]
    assert child.status == 0
    assert [(r["msg"], r["task_id"]) for r in sent] == [
        ("logapp imported", None),
        ("warning hi", "t-1"),
    ]
    assert child.stderr == b""  # nothing written twice, by a handler of the child's own


@pytest.mark.slow
def test_json_logs_of_a_process_pool_worker_carry_the_bodys_lines(tmp_path: Path) -> None:
    url, prefix = shared_url(lease=30)
    env = {"TASKFLOW_BROKER_URL": url}
    command = ["worker", "-A", "redisapp", "-c", "1", "--pool", "processes"]
    try:
        with (
            App("pool-json-client", broker=url) as client,
            running([*command, "--log-format", "json", "-l", "info"], tmp_path, env=env) as worker,
        ):
            result = client.send_task("cli.chatty", args=["o-9"])
            child = result.get(timeout=20)
            worker.signal(signal.SIGTERM)
            assert worker.wait(10) == 0, worker.stderr
    finally:
        drop_prefix(url, prefix)
    lines = [json.loads(line) for line in worker.stderr.splitlines()]  # every line is JSON
    (body,) = [line for line in lines if line["logger"] == "cliapp.body"]
    assert body["message"] == "charging o-9"
    assert (body["task_id"], body["task_name"], body["level"]) == (result.id, "cli.chatty", "INFO")
    assert child != worker.pid
