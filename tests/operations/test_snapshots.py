"""``app.admin`` export and import: a round trip into a second namespace (another Redis
prefix, NATS prefix, SQLite file, memory broker), idempotence, dry runs, bad files."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

import taskflow.operations._snapshot as snapshot_module
from taskflow import App
from taskflow.errors import BrokerError, ConfigError
from taskflow.message import TaskStatus
from taskflow.testing import drain

from .conftest import NewApp
from .helpers import fails_after, flaky, noop


def _fill(app: App, queue: str) -> dict[str, str]:
    """Two ready tasks, one scheduled, one dead: their ids by what they are."""
    bad = flaky(app, queue, failures=1, name="snap.flaky")
    dead = bad.delay(21).id
    drain(app, [queue])
    task = noop(app, queue, name="snap.noop")
    return {
        "ready": task.delay(1).id,
        "urgent": task.apply_async(args=(2,), priority=7).id,
        "scheduled": task.apply_async(args=(3,), countdown=3600).id,
        "dead": dead,
    }


def _export(app: App, **options: object) -> str:
    buf = io.StringIO()
    app.admin.export(buf, **options)  # type: ignore[arg-type]
    return buf.getvalue()


def test_export_then_import_into_another_namespace_round_trips(
    new_app: NewApp, queue: str, tmp_path: Path
) -> None:
    source, target = new_app(), new_app()
    ids = _fill(source, queue)
    path = tmp_path / "snap.jsonl"
    with path.open("w") as fp:
        assert source.admin.export(fp) == 4
    header, *lines = (json.loads(line) for line in path.read_text().splitlines())
    assert header["taskflow_snapshot"] == 1
    assert header["app"] == source.name
    assert {(d["id"], d["state"]) for d in lines} == {
        (ids["ready"], "ready"),
        (ids["urgent"], "ready"),
        (ids["scheduled"], "scheduled"),
        (ids["dead"], "dead"),
    }

    with path.open() as fp:
        assert target.admin.import_(fp, dry_run=True) == 4
    assert target.admin.queues() == []
    with path.open() as fp:
        assert target.admin.import_(fp) == 4

    (info,) = target.admin.queues()
    assert (info.name, info.ready, info.scheduled, info.dead) == (queue, 2, 1, 1)
    assert [t.id for t in target.admin.peek(queue)] == [ids["urgent"], ids["ready"]]
    (letter,) = target.admin.dead_letters(queue).items
    assert (letter.task_id, letter.task, letter.reason) == (ids["dead"], "snap.flaky", "failed")
    assert target.admin.task(ids["dead"]).status == "failed"
    # The imported tasks run in the target app, with their records.
    flaky(target, queue, failures=0, name="snap.flaky")
    noop(target, queue, name="snap.noop")
    assert target.admin.replay(queue).replayed == 1
    assert drain(target, [queue]) == 3
    assert target.result(ids["urgent"]).get(timeout=10) == 2
    assert target.result(ids["dead"]).get(timeout=10) == 42
    assert [h["status"] for h in target.result(ids["dead"]).info().history] == ["failed"]
    (entry,) = [e for e in target.admin.audit() if e.action == "import"]
    assert entry.count == 4


def test_importing_twice_skips_the_ids_already_there(new_app: NewApp, queue: str) -> None:
    source, target = new_app(), new_app()
    _fill(source, queue)
    text = _export(source)
    assert target.admin.import_(io.StringIO(text)) == 4
    report = target.admin.import_report(io.StringIO(text))
    assert (report.imported, report.skipped) == (0, 4)
    (info,) = target.admin.queues()
    assert (info.ready, info.scheduled, info.dead) == (2, 1, 1)


@pytest.mark.parametrize("step", ["publish", "add_dead"])
def test_an_import_stopped_part_way_is_finished_by_running_it_again(
    new_app: NewApp, queue: str, step: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The records are written before the messages: an import stopped between the two
    leaves records with no message, and running it again must write the messages rather
    than skip those ids as already there (their tasks would never run)."""
    source, target = new_app(), new_app()
    ids = _fill(source, queue)
    text = _export(source)
    fails_after(target.kernel.broker, step, 0, monkeypatch)
    with pytest.raises(BrokerError, match="the server stopped answering"):
        target.admin.import_(io.StringIO(text))
    monkeypatch.undo()

    report = target.admin.import_report(io.StringIO(text))
    assert (report.imported, report.skipped) == (
        4 if step == "publish" else 1,
        0 if step == "publish" else 3,
    )
    (info,) = target.admin.queues()
    assert (info.ready, info.scheduled, info.dead) == (2, 1, 1)
    assert target.result(ids["ready"]).status is TaskStatus.QUEUED
    assert target.result(ids["dead"]).status is TaskStatus.FAILED
    noop(target, queue, name="snap.noop")
    assert drain(target, [queue]) == 2
    assert target.result(ids["urgent"]).get(timeout=5) == 2
    assert target.admin.import_report(io.StringIO(text)).imported == 0  # and once only


def test_an_import_stopped_part_way_says_how_far_it_got_and_audits_that_much(
    new_app: NewApp, queue: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    source, target = new_app(), new_app()
    _fill(source, queue)
    text = _export(source)
    monkeypatch.setattr(snapshot_module, "_WINDOW", 2)
    fails_after(target.kernel.broker, "publish", 1, monkeypatch)
    with pytest.raises(BrokerError, match=r"^import stopped after 2 tasks imported \(audited"):
        target.admin.as_actor("alice").import_(io.StringIO(text))
    [entry] = target.admin.audit()
    assert (entry.action, entry.actor, entry.count, entry.details) == (
        "import",
        "alice",
        2,
        {"incomplete": True},
    )
    monkeypatch.undo()
    assert target.admin.import_report(io.StringIO(text)).imported == 2  # the rest


def test_a_redacted_export_has_no_bodies_and_cannot_be_imported(
    new_app: NewApp, queue: str
) -> None:
    source, target = new_app(), new_app()
    _fill(source, queue)
    text = _export(source, redact=True, states=("ready",))
    lines = [json.loads(line) for line in text.splitlines()[1:]]
    assert len(lines) == 2
    assert all("body" not in line for line in lines)
    with pytest.raises(ConfigError, match="line 2: no body"):
        target.admin.import_(io.StringIO(text))
    assert target.admin.queues() == []


@pytest.mark.parametrize(
    ("mangle", "line", "why"),
    [
        (lambda lines: ['{"hello": 1}', *lines[1:]], 1, "not a taskflow snapshot"),
        (lambda lines: [*lines[:3], "{not json", *lines[3:]], 4, "not JSON"),
        (lambda lines: [*lines[:-1], lines[-1].replace('"state": "', '"state": "x')], 5, "state"),
    ],
)
def test_a_bad_snapshot_names_the_first_bad_line_and_imports_nothing(
    new_app: NewApp, queue: str, mangle: object, line: int, why: str
) -> None:
    source, target = new_app(), new_app()
    _fill(source, queue)
    lines = _export(source).splitlines()
    bad = "\n".join(mangle(lines)) + "\n"  # type: ignore[operator]
    fp = io.StringIO(bad)
    fp.name = "bad.jsonl"  # type: ignore[misc]
    with pytest.raises(ConfigError, match=rf"bad.jsonl: line {line}: {why}.*nothing was imported"):
        target.admin.import_(fp)
    assert target.admin.queues() == []
    assert target.admin.audit() == []


def test_export_of_one_queue_and_state(app: App, queue: str) -> None:
    ids = _fill(app, queue)
    noop(app, queue + "x").delay()
    text = _export(app, queues=[queue], states=("scheduled",))
    (line,) = [json.loads(x) for x in text.splitlines()[1:]]
    assert (line["id"], line["state"], line["task"]) == (ids["scheduled"], "scheduled", "snap.noop")
    assert line["eta"] is not None
    assert line["record"]["status"] == TaskStatus.SCHEDULED.value


def test_a_path_or_one_queue_name_given_as_a_string_is_refused(app: App, queue: str) -> None:
    # A path read as lines was taken for a snapshot ("line 1: not JSON"), and one queue
    # name was taken for its letters ("no queue 'd'").
    _fill(app, queue)
    with pytest.raises(ConfigError, match=r"import takes an open text file, not a path"):
        app.admin.import_("snapshot.jsonl")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"export takes an open text file, not a path"):
        app.admin.export(Path("snapshot.jsonl"))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=rf"queues must be a list of names.*use \['{queue}'\]"):
        _export(app, queues=queue)
    assert app.admin.audit() == []
