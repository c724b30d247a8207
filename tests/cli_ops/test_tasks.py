"""``taskflow send``, ``task get|cancel|retry``."""

from __future__ import annotations

import json

from taskflow.message import TaskStatus
from taskflow.testing import drain
from tests.cli_ops.apps.opsapp import WORK
from tests.cli_ops.conftest import Ops


def test_send_prints_the_id_of_a_task_a_worker_then_runs(ops: Ops) -> None:
    result = ops.run("send", "ops.add", "--args", "[2, 3]", "--priority", "7")

    assert result.exit_code == 0, result.output
    task_id = result.stdout.strip()
    app = ops.app()
    assert app.get_task(task_id).priority == 7
    assert drain(app, [WORK]) == 1
    assert app.result(task_id).get(timeout=10) == 5


def test_send_warns_of_a_task_the_app_does_not_declare_and_names_the_likely_one(
    sqlite_ops: Ops,
) -> None:
    # A typo at 3 a.m. would otherwise be found later, as a NotRegistered dead letter.
    result = sqlite_ops.run("send", "ops.ad", "--args", "[2, 3]")
    assert result.exit_code == 0, result.output
    assert result.stderr.strip() == (
        "taskflow send: warning: task 'ops.ad' is not declared in this app (did you mean "
        "'ops.add'?); sent anyway: a worker that does not know it fails it with "
        "NotRegistered and dead-letters it"
    )
    assert sqlite_ops.app().get_task(result.stdout.strip()).name == "ops.ad"
    declared = sqlite_ops.run("send", "ops.add", "--args", "[2, 3]")
    assert (declared.exit_code, declared.stderr) == (0, "")


def test_send_with_options_as_json(sqlite_ops: Ops) -> None:
    result = sqlite_ops.run(
        "send",
        "ops.add",
        "--kwargs",
        '{"x": 1, "y": 2}',
        "-Q",
        "other",
        "--countdown",
        "60",
        "--idempotency-key",
        "k1",
        "--json",
    )
    assert result.exit_code == 0, result.output
    task_id = json.loads(result.stdout)["id"]
    app = sqlite_ops.app()
    info = app.get_task(task_id)
    assert (info.queue, info.status) == ("other", TaskStatus.SCHEDULED)
    again = sqlite_ops.run(
        "send",
        "ops.add",
        "--kwargs",
        '{"x": 1, "y": 2}',
        "-Q",
        "other",
        "--countdown",
        "60",
        "--idempotency-key",
        "k1",
    )
    assert again.stdout.strip() == task_id


def test_send_wait_prints_the_result(sqlite_ops: Ops) -> None:
    app = sqlite_ops.app()
    with app.worker(queues=[WORK], concurrency=1):
        result = sqlite_ops.run("send", "ops.add", "--args", "[20, 22]", "--wait", "30", "--json")
        failed = sqlite_ops.run("send", "ops.boom", "--args", "[1]", "--wait", "30")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout.strip().splitlines()[-1])["result"] == 42
    assert failed.exit_code == 1
    assert "failed" in failed.stderr and "ValueError" in failed.stderr
    assert len(failed.stderr.strip().splitlines()) == 1


def test_send_wait_refuses_a_fire_and_forget_task_before_sending_it(sqlite_ops: Ops) -> None:
    result = sqlite_ops.run("send", "ops.notify", "--args", "[1]", "--wait", "30")
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        "taskflow: error: --wait: task 'ops.notify' is declared store_result=False, so its "
        "outcome is not stored and there is nothing to wait for; nothing was sent"
    )
    app = sqlite_ops.app()
    assert sum(q.ready for q in app.admin.queues()) == 0  # nothing was sent
    sent = sqlite_ops.run("send", "ops.notify", "--args", "[1]")  # without --wait: sent
    assert sent.exit_code == 0, sent.output
    assert sum(q.ready for q in app.admin.queues()) == 1


def test_malformed_args_json_is_a_usage_error_with_its_position(sqlite_ops: Ops) -> None:
    result = sqlite_ops.run("send", "ops.add", "--args", "[1,\n 2,, 3]")
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        "taskflow: error: --args: invalid JSON at line 2 column 4: Expecting value"
    )
    assert sqlite_ops.run("send", "ops.add", "--kwargs", "[1]").exit_code == 2


def test_arguments_that_do_not_fit_the_task_are_a_usage_error(sqlite_ops: Ops) -> None:
    result = sqlite_ops.run("send", "ops.add", "--args", '["two", 3]')
    assert result.exit_code == 2
    assert result.stderr.startswith("taskflow: error: ops.add(x): ")
    queues = json.loads(sqlite_ops.run("queues", "--json").stdout)
    assert sum(q["ready"] for q in queues) == 0


def test_task_get_shows_the_record_and_its_history(ops: Ops) -> None:
    app = ops.app()
    failed = app.send_task("ops.boom", [1])
    drain(app, [WORK])
    assert ops.run("dlq", "replay", "--apply").exit_code == 0
    drain(app, [WORK])

    result = ops.run("task", "get", failed.id, "--json")

    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert (info["id"], info["task"], info["status"]) == (failed.id, "ops.boom", "failed")
    assert [h["status"] for h in info["history"]] == ["failed"]
    table = ops.run("task", "get", failed.id)
    assert all(len(line) <= 80 for line in table.stdout.splitlines()), table.stdout
    assert "ValueError" in table.stdout and "CYCLE" in table.stdout


def test_an_unknown_task_id_fails(sqlite_ops: Ops) -> None:
    for args in (["task", "get", "nope"], ["task", "cancel", "nope", "--apply"]):
        result = sqlite_ops.run(*args)
        assert result.exit_code == 1
        assert result.stderr.strip() == "taskflow: error: task 'nope' not found"


def test_task_cancel_is_a_dry_run_without_apply(ops: Ops) -> None:
    app = ops.app()
    queued = app.send_task("ops.add", [1, 2])

    dry = ops.run("task", "cancel", queued.id)
    assert dry.exit_code == 0, dry.output
    assert f"would cancel {queued.id}" in dry.stdout
    assert queued.status is TaskStatus.QUEUED

    done = ops.run("task", "cancel", queued.id, "--apply")
    assert done.exit_code == 0, done.output
    assert done.stdout.strip() == f"cancelled {queued.id}"
    assert queued.status is TaskStatus.CANCELLED
    drain(app, [WORK])  # a worker that meets the message skips it
    assert queued.status is TaskStatus.CANCELLED


def test_task_retry_sends_a_failed_task_again_only_with_apply(ops: Ops) -> None:
    app = ops.app()
    failed = app.send_task("ops.boom", [1])
    done = app.send_task("ops.add", [1, 1])
    drain(app, [WORK])
    assert failed.status is TaskStatus.FAILED

    dry = ops.run("task", "retry", failed.id)
    assert dry.exit_code == 0, dry.output
    assert f"would retry {failed.id}" in dry.stdout
    assert failed.status is TaskStatus.FAILED

    result = ops.run("task", "retry", failed.id, done.id, "--apply", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["ids"] == [failed.id]
    assert done.id in report["skipped"]
    assert failed.status is TaskStatus.QUEUED
    assert drain(app, [WORK]) == 1
    assert failed.status is TaskStatus.FAILED
    assert len(app.get_task(failed.id).history) == 1
