"""``taskflow dlq list|replay|discard``."""

from __future__ import annotations

import json

from taskflow import App
from taskflow.message import TaskStatus
from taskflow.testing import drain
from tests.cli_ops.apps.opsapp import WORK
from tests.cli_ops.conftest import Ops


def _dead(app: App, count: int) -> list[str]:
    ids = [app.send_task("ops.boom", [n]).id for n in range(count)]
    assert drain(app, [WORK]) == count
    return ids


def _dead_ids(ops: Ops) -> list[str]:
    result = ops.run("dlq", "list", "--json")
    assert result.exit_code == 0, result.output
    return [d["task_id"] for d in json.loads(result.stdout)["items"]]


def test_dlq_list_shows_each_dead_letter_with_its_reason(ops: Ops) -> None:
    app = ops.app()
    ids = _dead(app, 2)

    result = ops.run("dlq", "list", "--json", "-Q", WORK, "--task", "ops.boom")

    assert result.exit_code == 0, result.output
    page = json.loads(result.stdout)
    assert [d["task_id"] for d in page["items"]] == ids
    assert {(d["task"], d["queue"], d["reason"]) for d in page["items"]} == {
        ("ops.boom", WORK, "failed")
    }
    assert ops.run("dlq", "list", "--json", "--reason", "worker_lost").stdout.count("task_id") == 0
    table = ops.run("dlq", "list")
    assert all(len(line) <= 80 for line in table.stdout.splitlines()), table.stdout
    assert all(task_id in table.stdout for task_id in ids)


def test_an_error_quoting_control_characters_cannot_write_to_the_operators_terminal(
    sqlite_ops: Ops,
) -> None:
    # The error text is the task's (it may quote its arguments): an escape sequence in it
    # would retitle or rewrite the operator's terminal, a newline forge a row.
    app = sqlite_ops.app()
    evil = "bad \x1b]0;owned\x07 \x1b[2J\rX\nFORGED row"

    @app.task(name="ops.evil", queue=WORK)
    def fails() -> None:
        raise ValueError(evil)

    sent = fails.delay()
    assert drain(app, [WORK]) == 1
    for args in (("dlq", "list"), ("task", "get", sent.id)):
        shown = sqlite_ops.run(*args).stdout
        assert "\x1b" not in shown and "\x07" not in shown and "\r" not in shown, args
        assert not any(line.startswith("FORGED") for line in shown.splitlines()), args
        assert "\\x1b]0;owned\\x07" in shown.replace("\n", ""), (args, shown)
    as_json = json.loads(sqlite_ops.run("dlq", "list", "--json").stdout)
    assert as_json["items"][0]["error"] == f"ValueError: {evil}"


def test_dlq_list_since_takes_an_iso_time(sqlite_ops: Ops) -> None:
    _dead(sqlite_ops.app(), 1)
    assert _dead_ids(sqlite_ops)
    later = sqlite_ops.run("dlq", "list", "--json", "--since", "2999-01-01T00:00:00")
    assert json.loads(later.stdout)["items"] == []
    bad = sqlite_ops.run("dlq", "list", "--since", "yesterday")
    assert bad.exit_code == 2
    assert "--since" in bad.stderr and "'yesterday'" in bad.stderr


def test_dlq_replay_changes_nothing_without_apply(ops: Ops) -> None:
    app = ops.app()
    ids = _dead(app, 2)

    dry = ops.run("dlq", "replay")

    assert dry.exit_code == 0, dry.output
    assert "matched 2, would replay 2, skipped 0" in dry.stdout
    assert _dead_ids(ops) == ids
    assert all(app.result(i).status is TaskStatus.FAILED for i in ids)


def test_dlq_replay_apply_runs_the_tasks_again(ops: Ops) -> None:
    app = ops.app()
    first, second = _dead(app, 2)

    result = ops.run("dlq", "replay", "--id", second, "--apply", "--json")

    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert (report["matched"], report["replayed"], report["ids"]) == (1, 1, [second])
    assert _dead_ids(ops) == [first]
    assert app.result(second).status is TaskStatus.QUEUED
    assert drain(app, [WORK]) == 1  # it runs again (and fails again)
    assert len(app.get_task(second).history) == 1


def test_dlq_discard_removes_dead_letters_only_with_apply(ops: Ops) -> None:
    app = ops.app()
    ids = _dead(app, 2)

    dry = ops.run("dlq", "discard", "-Q", WORK)
    assert dry.stdout.splitlines()[0] == "would discard 2 dead letter(s)"
    assert _dead_ids(ops) == ids

    done = ops.run("dlq", "discard", "-Q", WORK, "--apply")
    assert done.exit_code == 0, done.output
    assert done.stdout.strip() == "discarded 2 dead letter(s)"
    assert _dead_ids(ops) == []
    assert all(app.result(i).status is TaskStatus.FAILED for i in ids)


def test_dlq_commands_on_an_unknown_queue_fail(sqlite_ops: Ops) -> None:
    _dead(sqlite_ops.app(), 1)
    for args in (["list"], ["replay", "--apply"], ["discard", "--apply"]):
        result = sqlite_ops.run("dlq", *args, "-Q", "nope")
        assert result.exit_code == 1, args
        assert result.stderr.startswith("taskflow: error: no queue 'nope' (known: ")
    assert len(_dead_ids(sqlite_ops)) == 1
