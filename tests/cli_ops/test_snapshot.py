"""``taskflow snapshot export|import``: a round trip between two Redis prefixes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from taskflow.testing import drain
from tests.cli_ops.apps.opsapp import WORK
from tests.cli_ops.conftest import Ops, _ops
from tests.integration import redis_helpers


@pytest.fixture
def target(monkeypatch: pytest.MonkeyPatch) -> Iterator[Ops]:
    """A second Redis prefix: the environment the work moves to."""
    url, prefix = redis_helpers.shared_url(lease=30)
    try:
        yield from _ops(url, monkeypatch)
    finally:
        redis_helpers.drop_prefix(url, prefix)


def test_a_snapshot_moves_waiting_and_dead_tasks_to_another_prefix(
    redis_ops: Ops, target: Ops, tmp_path: Path
) -> None:
    source = redis_ops.app()
    dead = source.send_task("ops.boom", [1])
    drain(source, [WORK])
    ready = [source.send_task("ops.add", [n, 1]).id for n in range(3)]
    later = source.send_task("ops.add", [7, 7], countdown=3600).id
    snap = tmp_path / "work.jsonl"

    exported = redis_ops.run("snapshot", "export", "--out", str(snap), "--json")
    assert exported.exit_code == 0, exported.output
    assert json.loads(exported.stdout)["exported"] == 5
    lines = snap.read_text().splitlines()
    assert json.loads(lines[0])["taskflow_snapshot"] == 1
    assert {json.loads(line)["id"] for line in lines[1:]} == {dead.id, *ready, later}

    dry = target.run("snapshot", "import", "--in", str(snap))
    assert dry.exit_code == 0, dry.output
    assert dry.stdout.splitlines()[0] == f"would import 5 task(s) from {snap}, skipped 0"
    queues = json.loads(target.run("queues", "--json").stdout)
    assert sum(q["ready"] + q["scheduled"] + q["dead"] for q in queues) == 0

    done = target.run("snapshot", "import", "--in", str(snap), "--apply")
    assert done.exit_code == 0, done.output
    work = {q["name"]: q for q in json.loads(target.run("queues", "--json").stdout)}[WORK]
    assert (work["ready"], work["scheduled"], work["dead"]) == (3, 1, 1)
    moved = target.app()
    assert drain(moved, [WORK]) == 3
    assert [moved.result(i).get(timeout=10) for i in ready] == [1, 2, 3]

    again = target.run("snapshot", "import", "--in", str(snap), "--apply", "--json")
    report = json.loads(again.stdout)
    assert (report["imported"], report["skipped"]) == (0, 5)  # ids present here are skipped


def test_a_redacted_snapshot_has_no_arguments(redis_ops: Ops, tmp_path: Path) -> None:
    redis_ops.app().send_task("ops.add", [424242, 1])
    snap = tmp_path / "redacted.jsonl"
    result = redis_ops.run("snapshot", "export", "--out", str(snap), "--redact")
    assert result.exit_code == 0, result.output
    assert "arguments left out" in result.stdout
    assert "424242" not in snap.read_text()


def test_a_file_that_is_not_a_snapshot_imports_nothing(
    sqlite_ops: Ops, redis_ops: Ops, tmp_path: Path
) -> None:
    redis_ops.app().send_task("ops.add", [1, 1])
    good = tmp_path / "good.jsonl"
    assert redis_ops.run("snapshot", "export", "--out", str(good)).exit_code == 0
    lines = good.read_text().splitlines()
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join([*lines, "{not json"]) + "\n")

    result = sqlite_ops.run("snapshot", "import", "--in", str(bad), "--apply")

    assert result.exit_code == 1
    assert "line 3" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    queues = json.loads(sqlite_ops.run("queues", "--json").stdout)
    assert sum(q["ready"] for q in queues) == 0


def test_export_of_an_unknown_state_is_a_usage_error(sqlite_ops: Ops, tmp_path: Path) -> None:
    out = tmp_path / "x.jsonl"
    result = sqlite_ops.run("snapshot", "export", "--out", str(out), "--states", "ready,done")
    assert result.exit_code == 2
    assert "--states" in result.stderr and "done" in result.stderr
    assert not out.exists()


def test_import_of_a_missing_file_is_a_usage_error(sqlite_ops: Ops, tmp_path: Path) -> None:
    result = sqlite_ops.run("snapshot", "import", "--in", str(tmp_path / "none.jsonl"))
    assert result.exit_code == 2
