"""``taskflow queues``, ``inspect``, ``purge``, ``pause``/``resume``/``paused``."""

from __future__ import annotations

import json
from typing import Any

import pytest

from taskflow.brokers.base import Message
from taskflow.codec import encode_envelope
from taskflow.errors import BrokerError
from taskflow.message import Envelope, TaskStatus
from taskflow.results.sqlite import SqliteResultStore
from taskflow.testing import drain
from tests.cli_ops.apps.opsapp import OTHER, WORK
from tests.cli_ops.conftest import Ops


def _queue(ops: Ops, name: str) -> dict[str, object]:
    result = ops.run("queues", "--json")
    assert result.exit_code == 0, result.output
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    return rows[name]


def test_queues_counts_ready_and_scheduled_tasks_per_queue(ops: Ops) -> None:
    app = ops.app()
    for n in range(3):
        app.send_task("ops.add", [n, 1])
    app.send_task("ops.add", [9, 9], countdown=3600)
    app.send_task("ops.other")

    work = _queue(ops, WORK)
    assert (work["ready"], work["scheduled"], work["running"], work["dead"]) == (3, 1, 0, 0)
    assert work["paused"] is False
    assert _queue(ops, OTHER)["ready"] == 1


def test_the_queues_table_fits_80_columns(sqlite_ops: Ops) -> None:
    app = sqlite_ops.app()
    app.send_task("ops.add", [1, 2])
    app.send_task("ops.other")

    result = sqlite_ops.run("queues")

    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert all(len(line) <= 80 for line in lines), result.stdout
    header = next(line for line in lines if "QUEUE" in line)
    assert header.split() == ["QUEUE", "READY", "SCHEDULED", "RUNNING", "DEAD", "PAUSED"]
    work = next(line for line in lines if line.split()[:1] == [WORK])
    assert work.split() == [WORK, "1", "0", "0", "0", "no"]


def test_queues_watch_prints_one_json_line_per_round(sqlite_ops: Ops) -> None:
    sqlite_ops.app().send_task("ops.add", [1, 2])

    result = sqlite_ops.run("queues", "--json", "--watch", "0.01", "--watch-count", "3")

    assert result.exit_code == 0, result.output
    rounds = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(rounds) == 3
    assert all({q["name"]: q["ready"] for q in r}[WORK] == 1 for r in rounds)


def test_inspect_lists_the_waiting_tasks_without_their_arguments(ops: Ops) -> None:
    app = ops.app()
    sent = [app.send_task("ops.add", [n, 424242]).id for n in range(3)]

    result = ops.run("inspect", WORK, "--json", "--limit", "2", "--offset", "1")

    assert result.exit_code == 0, result.output
    listed = json.loads(result.stdout)
    assert [t["id"] for t in listed] == sent[1:3]
    assert {t["task"] for t in listed} == {"ops.add"}
    assert "424242" not in result.stdout

    table = ops.run("inspect", WORK)
    assert table.exit_code == 0
    assert all(len(line) <= 80 for line in table.stdout.splitlines()), table.stdout
    assert all(task_id in table.stdout for task_id in sent)


def test_inspect_shows_a_task_due_past_the_year_9999_as_due_then(sqlite_ops: Ops) -> None:
    # Another producer may write any finite eta (docs/protocol.md); the table and --json
    # failed with "year 33715 is out of range".
    app = sqlite_ops.app()
    env = Envelope(id="far-away", task="ops.add", queue=WORK, args=[1, 2], eta=1e12)
    far = Message("far-away", WORK, encode_envelope(env), eta=1e12)
    app.kernel.call(app.kernel.backends.connect())
    app.kernel.call(app.broker.declare(WORK))
    app.kernel.call(app.broker.publish([far]))
    table = sqlite_ops.run("inspect", WORK, "--state", "scheduled")
    assert table.exit_code == 0, table.output
    assert "far-away" in table.stdout
    listed = sqlite_ops.run("inspect", WORK, "--state", "scheduled", "--json")
    assert listed.exit_code == 0, listed.output
    assert json.loads(listed.stdout)[0]["eta"].startswith("9999-12-31T23:59:59")


def test_an_unknown_queue_fails_with_the_known_ones(sqlite_ops: Ops) -> None:
    sqlite_ops.app().send_task("ops.add", [1, 2])

    result = sqlite_ops.run("inspect", "nope")

    assert result.exit_code == 1
    assert result.stderr.strip() == f"taskflow: error: no queue 'nope' (known: {WORK})"
    assert "Traceback" not in result.output


def test_purge_is_a_dry_run_without_apply(ops: Ops) -> None:
    app = ops.app()
    waiting = [app.send_task("ops.add", [n, 1]) for n in range(2)]
    later = app.send_task("ops.add", [5, 5], countdown=3600)

    dry = ops.run("purge", WORK)
    assert dry.exit_code == 0, dry.output
    assert "would purge 2 ready task(s) from work" in dry.stdout
    assert "--apply" in dry.stdout
    assert _queue(ops, WORK)["ready"] == 2
    assert all(r.status is TaskStatus.QUEUED for r in waiting)

    done = ops.run("purge", WORK, "--apply", "--json")
    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout) == {"queue": WORK, "dry_run": False, "purged": 2}
    assert all(r.status is TaskStatus.CANCELLED for r in waiting)
    assert later.status is TaskStatus.SCHEDULED
    assert _queue(ops, WORK)["scheduled"] == 1

    assert ops.run("purge", WORK, "--scheduled", "--apply").exit_code == 0
    assert later.status is TaskStatus.CANCELLED


def test_purge_of_an_unknown_queue_changes_nothing_and_fails(sqlite_ops: Ops) -> None:
    sqlite_ops.app().send_task("ops.add", [1, 2])
    result = sqlite_ops.run("purge", "nope", "--apply")
    assert result.exit_code == 1
    assert "no queue 'nope'" in result.stderr
    assert _queue(sqlite_ops, WORK)["ready"] == 1


def test_a_resume_whose_audit_is_refused_exits_1_saying_it_took_effect(
    sqlite_ops: Ops, monkeypatch: pytest.MonkeyPatch
) -> None:
    sqlite_ops.app().send_task("ops.add", [1, 2])
    assert sqlite_ops.run("pause", WORK).exit_code == 0

    async def refused(self: Any, entry: dict[str, Any], *, retention: float) -> None:
        raise BrokerError("database or disk is full")

    monkeypatch.setattr(SqliteResultStore, "add_audit", refused)
    result = sqlite_ops.run("resume", WORK)
    assert result.exit_code == 1
    assert f"resume on queue {WORK!r} took effect and is not undone" in result.output
    assert "database or disk is full" in result.output
    assert json.loads(sqlite_ops.run("paused", "--json").stdout) == []


def test_pause_and_resume_a_queue(ops: Ops) -> None:
    app = ops.app()
    app.send_task("ops.add", [1, 2])

    assert ops.run("pause", WORK).stdout.strip() == f"paused {WORK}"
    assert json.loads(ops.run("paused", "--json").stdout) == [WORK]
    assert _queue(ops, WORK)["paused"] is True
    assert drain(app, [WORK]) == 0

    assert ops.run("resume", WORK).exit_code == 0
    assert ops.run("paused").stdout.strip() == "no paused queues"
    assert _queue(ops, WORK)["paused"] is False
    assert drain(app, [WORK]) == 1
