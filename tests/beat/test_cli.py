"""``taskflow schedules ...`` in-process through click's runner, on an in-memory app."""

from __future__ import annotations

from collections.abc import Iterator

import click
import pytest
from click.testing import CliRunner, Result

from taskflow.beat.schedule import SCHEDULE_OPTIONS
from taskflow.cli.main import cli
from tests.beat.apps import schedules_app

SPEC = "tests.beat.apps.schedules_app"


@pytest.fixture(autouse=True)
def fresh_store() -> Iterator[None]:
    """Forget what earlier tests stored in the module's app."""
    yield
    schedules_app.app.close()
    schedules_app.app.results._values.clear()  # type: ignore[attr-defined]


def run(*args: str) -> Result:
    return CliRunner().invoke(cli, [*args], catch_exceptions=False)


def test_schedules_add_list_pause_resume_remove() -> None:
    added = run(
        "schedules",
        "add",
        "-A",
        SPEC,
        "sales",
        "--task",
        "shop.report",
        "--every",
        "30",
        "--args",
        '["sales"]',
    )
    assert added.exit_code == 0, added.output
    assert "added sales: every 30s -> shop.report" in added.output

    listed = run("schedules", "list", "-A", SPEC)
    assert listed.exit_code == 0
    lines = listed.output.splitlines()
    assert lines[0].split() == ["NAME", "TRIGGER", "TASK", "NEXT", "(UTC)", "STATE", "SOURCE"]
    assert "nightly" in lines[1] and "'0 3 * * *' Europe/Berlin" in lines[1]
    assert lines[1].split()[-2:] == ["active", "code"]
    assert lines[2].startswith("sales") and lines[2].split()[-2:] == ["active", "stored"]

    assert run("schedules", "pause", "-A", SPEC, "sales").exit_code == 0
    assert run("schedules", "pause", "-A", SPEC, "nightly").exit_code == 0
    paused = {i.schedule.name: i.paused for i in schedules_app.app.schedules.list()}
    assert paused == {"nightly": True, "sales": True}
    assert run("schedules", "resume", "-A", SPEC, "nightly").exit_code == 0

    removed = run("schedules", "remove", "-A", SPEC, "sales")
    assert removed.exit_code == 0 and "removed sales" in removed.output
    names = [i.schedule.name for i in schedules_app.app.schedules.list()]
    assert names == ["nightly"]


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (
            ["add", "x", "--task", "shop.report", "--cron", "99 * * * *"],
            2,
            "invalid cron expression",
        ),
        (["add", "x", "--task", "shop.report", "--every", "0"], 2, "every must be a positive"),
        (["add", "x", "--task", "shop.nope", "--every", "5"], 2, "no task named 'shop.nope'"),
        (
            ["add", "x", "--task", "shop.report", "--every", "5", "--args", "[1"],
            2,
            "not valid JSON",
        ),
        (["add", "x", "--task", "shop.report", "--every", "5", "--args", "[1]"], 2, "kind"),
        (
            ["add", "x", "--task", "shop.report", "--every", "5", "--kwargs", "[1]"],
            2,
            "--kwargs must be a JSON object",
        ),
        (["remove", "ghost"], 1, "no schedule named 'ghost'"),
        (["remove", "nightly"], 2, "declared in code"),
        (["pause", "ghost"], 1, "no schedule named 'ghost'"),
    ],
)
def test_bad_schedule_commands_fail_with_one_line(args: list[str], code: int, message: str) -> None:
    result = CliRunner().invoke(cli, ["schedules", args[0], "-A", SPEC, *args[1:]])
    assert result.exit_code == code, result.output
    assert message in result.output
    assert "Traceback" not in result.output


def test_schedules_add_has_an_option_for_every_schedule_option() -> None:
    group = cli.commands["schedules"]
    assert isinstance(group, click.Group)
    params = {p.name for p in group.commands["add"].params}
    assert params - {"app_spec", "task_name"} == SCHEDULE_OPTIONS  # NAME is the name


def test_schedules_add_parses_json_arguments() -> None:
    added = run(
        "schedules", "add", "-A", SPEC, "k", "--task", "shop.report", "--every", "5",
        "--kwargs", '{"kind": "k"}', "--queue", "reports", "--priority", "3", "--missed", "skip",
    )  # fmt: skip
    assert added.exit_code == 0, added.output
    [info] = [i for i in schedules_app.app.schedules.list() if i.schedule.name == "k"]
    s = info.schedule
    assert (s.args, dict(s.kwargs), s.queue, s.priority, s.missed) == (
        (),
        {"kind": "k"},
        "reports",
        3,
        "skip",
    )


def test_schedules_without_an_app_is_a_usage_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TASKFLOW_APP", raising=False)
    result = CliRunner().invoke(cli, ["schedules", "list"])
    assert result.exit_code == 2 and "no app given" in result.output
