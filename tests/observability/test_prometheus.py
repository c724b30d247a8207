"""``taskflow worker --metrics-port``: scrapes of the real endpoint of real processes."""

from __future__ import annotations

import re
import signal
import socket
import sys
import urllib.request
from pathlib import Path

import pytest

from tests.cli.helpers import ROOT, pids, run, running, wait_for

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")

APPS = Path(__file__).parent / "apps"
SECRET = "s3cr3t-metrics-5d0e"
ENV = {"PYTHONPATH": f"{APPS}:{ROOT}", "LOGAPP_SECRET": SECRET}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text: str = response.read().decode()
        return text


def _scraped(port: int, wanted: str) -> bool:
    try:
        return wanted in _scrape(port)
    except OSError:
        return False


def test_a_worker_serves_its_metrics_in_prometheus_text(tmp_path: Path) -> None:
    port = _free_port()
    args = ["worker", "-A", "logapp", "--metrics-port", str(port)]
    done = 'taskflow_tasks_completed_total{task="logapp.work",queue="default",status="succeeded"}'
    with running(args, tmp_path, env=ENV) as worker:
        wait_for(lambda: _scraped(port, done), 30, "the task's metrics")
        text = _scrape(port)
        worker.signal(signal.SIGTERM)
        assert worker.wait(30) == 0

    assert "# HELP taskflow_tasks_completed_total Attempts that ended, by status.\n" in text
    assert "# TYPE taskflow_tasks_completed_total counter\n" in text
    assert f"{done} 1\n" in text
    assert "# TYPE taskflow_task_latency_seconds histogram\n" in text
    assert re.search(r'taskflow_task_latency_seconds_bucket\{.*le="\+Inf"\} 2\n', text)
    assert "# TYPE taskflow_tasks_running gauge\n" in text
    assert 'taskflow_queue_depth{queue="default",state="ready"} 0\n' in text
    assert 'taskflow_tasks_scheduled_total{task="logapp.work",queue="default"} 2\n' in text
    assert SECRET not in text


def test_the_processes_of_a_supervised_worker_share_one_port(tmp_path: Path) -> None:
    port = _free_port()
    args = ["worker", "-A", "logapp", "-P", "2", "--metrics-port", str(port)]
    with running(args, tmp_path, env=ENV) as supervisor:
        wait_for(lambda: len(pids(tmp_path, "done")) == 2, 30, "both processes' tasks")
        wait_for(lambda: _scraped(port, 'process="1"'), 30, "the first process's metrics")
        wait_for(lambda: _scraped(port, 'process="2"'), 30, "the second process's metrics")
        text = _scrape(port)
        supervisor.signal(signal.SIGTERM)
        assert supervisor.wait(30) == 0

    # The supervisor serves the metrics on a thread: it starts its workers, never forks.
    assert "started worker process 1" in supervisor.stderr
    assert "forked" not in supervisor.stderr
    assert text.count("# TYPE taskflow_tasks_completed_total counter\n") == 1
    for index in ("1", "2"):
        assert (
            f'taskflow_tasks_completed_total{{process="{index}",task="logapp.work",'
            f'queue="default",status="succeeded"}} 1\n'
        ) in text


def test_a_port_in_use_is_one_line_and_exit_status_1(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run(["worker", "-A", "logapp", "--metrics-port", str(port)], tmp_path, env=ENV)

    assert result.returncode == 1
    assert result.stderr.splitlines()[-1] == (
        f"taskflow: error: --metrics-port {port}: Address already in use"
    )
