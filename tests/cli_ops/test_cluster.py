"""``taskflow workers``, ``stats`` and ``audit``."""

from __future__ import annotations

import json
import time
import types
from typing import Any

import pytest

import taskflow.brokers.sqlite as sqlite_broker
from taskflow import App
from tests.cli_ops.apps.opsapp import WORK
from tests.cli_ops.conftest import Ops


def _heartbeat(app: App, worker_id: str, last_seen: float) -> None:
    """A worker's heartbeat as a running worker writes it."""
    info: dict[str, Any] = {
        "id": worker_id,
        "hostname": "host-a",
        "pid": 4242,
        "queues": [WORK],
        "concurrency": 4,
        "pool": "threads",
        "running": ["t-1"],
        "running_count": 1,
        "counters": {"succeeded": 5, "failed": 1},
        "tasks": {"ops.add": 1},
        "started_at": last_seen - 60,
        "last_seen": last_seen,
        "heartbeat": 5.0,
    }

    async def put() -> None:
        await app.kernel.connect()
        await app.results.put_worker(info, retention=3600)

    app.kernel.call(put())


def test_workers_lists_live_workers_and_marks_lost_ones(ops: Ops) -> None:
    app = ops.app()
    now = time.time()
    _heartbeat(app, "w-alive", now)
    _heartbeat(app, "w-gone", now - 600)

    result = ops.run("workers", "--json")

    assert result.exit_code == 0, result.output
    states = {w["id"]: w["state"] for w in json.loads(result.stdout)}
    assert states == {"w-alive": "alive", "w-gone": "lost"}
    table = ops.run("workers").stdout
    assert all(len(line) <= 80 for line in table.splitlines()), table
    gone = next(line for line in table.splitlines() if "w-gone" in line)
    assert gone.split()[-1] == "LOST"
    alive = next(line for line in table.splitlines() if "w-alive" in line)
    assert "1/4" in alive and alive.split()[-1] == "alive"


def test_workers_says_so_when_there_are_none(sqlite_ops: Ops) -> None:
    result = sqlite_ops.run("workers")
    assert (result.exit_code, result.stdout.strip()) == (0, "no workers")


def test_stats_reports_queue_depths_and_worker_counters(ops: Ops) -> None:
    app = ops.app()
    for n in range(2):
        app.send_task("ops.add", [n, 1])
    _heartbeat(app, "w-1", time.time())

    result = ops.run("stats", "--json")

    assert result.exit_code == 0, result.output
    stats = json.loads(result.stdout)
    assert {q["name"]: q["ready"] for q in stats["queues"]}[WORK] == 2
    assert stats["workers"] == 1
    assert stats["totals"]["succeeded"] == 5
    table = ops.run("stats").stdout
    assert all(len(line) <= 80 for line in table.splitlines()), table
    assert "succeeded" in table and WORK in table


def test_stats_and_queues_lead_with_the_brokers_alarms(
    sqlite_ops: Ops, monkeypatch: pytest.MonkeyPatch
) -> None:
    sqlite_ops.app().send_task("ops.add", [1, 2])
    assert json.loads(sqlite_ops.run("stats", "--json").stdout)["alarms"] == []

    def nearly_full(path: str) -> Any:
        return types.SimpleNamespace(total=10**12, used=10**12 - 5_000_000, free=5_000_000)

    monkeypatch.setattr(sqlite_broker.shutil, "disk_usage", nearly_full)
    [alarm] = json.loads(sqlite_ops.run("stats", "--json").stdout)["alarms"]
    assert "5,000,000 bytes free on its disk" in alarm
    table = sqlite_ops.run("stats").stdout
    assert table.split()[:3] == ["ALARM", "sqlite", "at"]
    assert all(len(line) <= 80 for line in table.splitlines()), table
    # `taskflow queues`, an operator's first look, leads with them too; its JSON is the
    # list of queues it always was.
    assert sqlite_ops.run("queues").stdout.split()[:3] == ["ALARM", "sqlite", "at"]
    assert isinstance(json.loads(sqlite_ops.run("queues", "--json").stdout), list)


def test_stats_watch_prints_a_bounded_number_of_rounds(sqlite_ops: Ops) -> None:
    result = sqlite_ops.run("stats", "--json", "--watch", "0.01", "--watch-count", "2")
    assert result.exit_code == 0, result.output
    rounds = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(rounds) == 2
    assert all({"queues", "totals", "workers"} <= set(r) for r in rounds)


def test_applied_actions_are_audited_and_dry_runs_are_not(ops: Ops) -> None:
    app = ops.app()
    app.send_task("ops.add", [1, 1])
    assert ops.run("purge", WORK).exit_code == 0
    assert json.loads(ops.run("audit", "--json").stdout) == []

    assert ops.run("purge", WORK, "--apply").exit_code == 0
    assert ops.run("pause", WORK).exit_code == 0

    entries = json.loads(ops.run("audit", "--json").stdout)
    assert [(e["action"], e["target"]) for e in entries] == [("pause", WORK), ("purge", WORK)]
    assert entries[1]["count"] == 1
    table = ops.run("audit", "--limit", "1").stdout
    assert all(len(line) <= 80 for line in table.splitlines()), table
    assert "pause" in table and "purge" not in table
