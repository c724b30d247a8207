"""An admin action whose audit entry the result store refuses (a full Redis, say): the
action stands, the error says it took effect, and the entry is logged instead. Reading a
dead letter's arguments is the exception: it happens only once it is audited. (A real
full server: ``tests/integration/test_redis_full_server.py``.)"""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest

import taskflow.operations._dead as dead_module
from taskflow import App
from taskflow.errors import AuditNotWritten, BrokerError
from taskflow.testing import drain

from .helpers import fails_after, flaky, noop

REFUSAL = "OOM command not allowed when used memory > 'maxmemory'"


def refuse_audit(app: App, monkeypatch: pytest.MonkeyPatch) -> None:
    """The app's result store refuses every audit entry, as a full Redis does."""

    async def refused(entry: dict[str, Any], *, retention: float) -> None:
        raise BrokerError(REFUSAL)

    monkeypatch.setattr(app.kernel.results, "add_audit", refused)


def audit_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "taskflow.audit"]


def test_a_pause_whose_audit_is_refused_stands_and_says_so(
    app: App, queue: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    noop(app, queue).delay()
    refuse_audit(app, monkeypatch)
    ops = app.admin.as_actor("alice")
    with caplog.at_level(logging.ERROR, logger="taskflow.audit"):
        with pytest.raises(AuditNotWritten) as raised:
            ops.pause(queue)
    err = raised.value
    assert isinstance(err, BrokerError)  # code that handles backend errors still catches it
    assert (err.action, err.target, err.count) == ("pause", queue, 0)
    assert f"pause on queue {queue!r} took effect and is not undone" in str(err)
    assert "taskflow.audit" in str(err) and REFUSAL in str(err)
    assert next(q for q in app.admin.queues() if q.name == queue).paused
    assert drain(app, [queue]) == 0

    [line] = audit_lines(caplog)
    assert line.levelno == logging.ERROR
    logged = json.loads(line.getMessage().split("instead: ", 1)[1])
    assert {k: logged[k] for k in ("actor", "action", "target", "count", "ids")} == {
        "actor": "alice",
        "action": "pause",
        "target": queue,
        "count": 0,
        "ids": [],
    }


def test_a_replay_whose_audit_is_refused_counts_what_it_replayed(
    app: App, queue: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    task = flaky(app, queue, failures=3)  # the first three runs fail
    results = [task.delay(i) for i in range(3)]
    drain(app, [queue])
    assert len(app.admin.dead_letters(queue).items) == 3
    refuse_audit(app, monkeypatch)
    with caplog.at_level(logging.ERROR, logger="taskflow.audit"):
        with pytest.raises(AuditNotWritten, match=r"\(3 tasks\)") as raised:
            app.admin.replay(queue)
    assert (raised.value.action, raised.value.count) == ("replay", 3)
    # Replayed, once: running it again would find nothing left to replay.
    assert app.admin.dead_letters(queue).items == []
    assert drain(app, [queue]) == 3
    assert [r.get(timeout=5) for r in results] == [0, 2, 4]
    [line] = audit_lines(caplog)
    logged = json.loads(line.getMessage().split("instead: ", 1)[1])
    assert sorted(logged["ids"]) == sorted(r.id for r in results)
    # The log line holds ids and counts, never a task's arguments.
    assert "args" not in logged and "kwargs" not in logged


def test_arguments_are_not_shown_when_their_showing_cannot_be_audited(
    app: App, queue: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    task = flaky(app, queue, failures=10**6)
    dead = task.delay(4242)
    drain(app, [queue])
    refuse_audit(app, monkeypatch)
    with caplog.at_level(logging.ERROR, logger="taskflow.audit"):
        with pytest.raises(BrokerError) as raised:
            app.admin.reveal(dead.id)
    assert not isinstance(raised.value, AuditNotWritten)
    assert f"the arguments of task {dead.id!r} are not shown" in str(raised.value)
    assert REFUSAL in str(raised.value)
    assert "4242" not in str(raised.value)
    assert audit_lines(caplog) == []  # nothing was shown, so nothing is logged as done


def test_a_purge_stopped_part_way_whose_audit_is_refused_logs_the_incomplete_entry(
    app: App, queue: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(dead_module, "BATCH", 2)
    task = noop(app, queue)
    for i in range(5):
        task.delay(i)
    fails_after(app.kernel.broker, "purge_batch_closing", 1, monkeypatch)
    refuse_audit(app, monkeypatch)
    with caplog.at_level(logging.ERROR, logger="taskflow.audit"):
        with pytest.raises(BrokerError, match=r"purge of .* stopped after \d+ tasks purged") as e:
            app.admin.purge(queue)
    assert "(not audited: the result store refused the entry too; it is in the log)" in str(e.value)
    [line] = audit_lines(caplog)
    logged = json.loads(line.getMessage().split("instead: ", 1)[1])
    assert (logged["action"], logged["details"]) == ("purge", {"incomplete": True})
    assert logged["count"] == len(logged["ids"]) > 0


def test_an_action_of_another_api_whose_audit_is_refused_names_its_target_as_given(
    app: App, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # A schedule paused through the admin web, say: its target is a schedule, not a queue.
    refuse_audit(app, monkeypatch)
    with caplog.at_level(logging.ERROR, logger="taskflow.audit"):
        with pytest.raises(AuditNotWritten) as raised:
            app.admin.as_actor("bob").record("schedule_pause", "nightly-report")
    assert "schedule_pause on 'nightly-report' took effect and is not undone" in str(raised.value)
    assert "queue" not in str(raised.value).split(" took effect")[0]
    [line] = audit_lines(caplog)
    assert json.loads(line.getMessage().split("instead: ", 1)[1])["target"] == "nightly-report"
