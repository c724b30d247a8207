"""``app.admin`` dead letters: paging, filters, replay, discard, retry and purge, on every
backend (workers run in-process with ``run_until_idle``)."""

from __future__ import annotations

import functools
import time
from typing import Any

import pytest

import taskflow.operations._dead as dead_module
from taskflow import App
from taskflow.errors import BrokerError, ConfigError, NotFound, TaskCancelled
from taskflow.message import TaskStatus
from taskflow.testing import drain
from tests.integration import redis_helpers

from .helpers import fails_after, flaky, noop


def _dead(app: App, queue: str, count: int, name: str = "") -> list[str]:
    task = flaky(app, queue, failures=10**6, name=name)
    ids = [task.delay(i).id for i in range(count)]
    drain(app, [queue])
    return ids


def test_cursor_paging_walks_every_dead_letter_exactly_once(app: App, queue: str) -> None:
    other = queue + "b"
    ids = _dead(app, queue, 7) + _dead(app, other, 4)
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        page = app.admin.dead_letters(limit=3, cursor=cursor)
        seen += [d.task_id for d in page.items]
        pages += 1
        cursor = page.next_cursor
        if cursor is None:
            break
    assert seen == ids
    assert pages == 4
    # One queue only: its own letters, oldest first.
    page = app.admin.dead_letters(other, limit=10)
    assert [d.task_id for d in page.items] == ids[7:]
    assert page.next_cursor is None


def test_dead_letters_filter_by_task_reason_and_time(app: App, queue: str) -> None:
    first = _dead(app, queue, 2, name=f"a.{queue}")
    second = _dead(app, queue, 3, name=f"b.{queue}")
    page = app.admin.dead_letters(queue, task=f"b.{queue}", limit=2)
    assert [d.task_id for d in page.items] == second[:2]
    rest = app.admin.dead_letters(queue, task=f"b.{queue}", limit=2, cursor=page.next_cursor)
    assert [d.task_id for d in rest.items] == second[2:]
    assert rest.next_cursor is None
    letter = page.items[0]
    assert (letter.task, letter.reason, letter.attempts) == (f"b.{queue}", "failed", 1)
    assert letter.error is not None and "ValueError" in letter.error
    assert app.admin.dead_letters(queue, reason="worker_lost").items == []
    assert len(app.admin.dead_letters(queue, reason="failed").items) == 5
    assert app.admin.dead_letters(queue, since=time.time() + 60).items == []
    assert [d.task_id for d in app.admin.dead_letters(queue, since=0.0).items] == first + second


def test_replay_dry_run_changes_nothing_and_apply_runs_the_task_again(app: App, queue: str) -> None:
    task = flaky(app, queue, failures=1)
    result = task.delay(21)
    drain(app, [queue])

    preview = app.admin.replay(queue, dry_run=True)
    assert (preview.matched, preview.replayed, preview.dry_run) == (1, 1, True)
    assert preview.ids == [result.id]
    assert result.status is TaskStatus.FAILED
    assert len(app.admin.dead_letters(queue).items) == 1
    assert [e.action for e in app.admin.audit()] == []

    report = app.admin.replay(queue)
    assert (report.matched, report.replayed, report.skipped) == (1, 1, {})
    info = result.info()
    assert (info.status, info.attempts) == (TaskStatus.QUEUED, 0)
    assert [h["status"] for h in info.history] == ["failed"]
    assert app.admin.dead_letters(queue).items == []
    assert drain(app, [queue]) == 1
    assert result.get(timeout=10) == 42
    assert task.attempts == [1, 1]


def test_replaying_twice_reports_the_second_as_skipped(app: App, queue: str) -> None:
    task = flaky(app, queue, failures=1)
    result = task.delay(1)
    drain(app, [queue])
    assert app.admin.replay(queue, ids=[result.id]).replayed == 1
    again = app.admin.replay(queue, ids=[result.id, "no-such-id"])
    assert (again.matched, again.replayed) == (0, 0)
    assert again.skipped == {
        result.id: "not a dead letter (its record is queued)",
        "no-such-id": "not a dead letter (no such task)",
    }
    assert app.admin.peek(queue)[0].id == result.id
    assert len(app.admin.peek(queue)) == 1
    assert drain(app, [queue]) == 1
    assert result.get(timeout=10) == 2


def test_replay_gives_a_fresh_retry_budget(app: App, queue: str) -> None:
    task = flaky(app, queue, failures=3, retries=1)
    result = task.delay(1)
    drain(app, [queue])
    assert result.status is TaskStatus.FAILED
    app.admin.replay(queue)
    drain(app, [queue])
    assert result.get(timeout=10) == 2
    assert task.attempts == [1, 2, 1, 2]


def test_replay_filters_and_limit(app: App, queue: str) -> None:
    a = _dead(app, queue, 3, name=f"a.{queue}")
    b = _dead(app, queue, 2, name=f"b.{queue}")
    report = app.admin.replay(task=f"a.{queue}", limit=2)
    assert (report.matched, report.replayed) == (2, 2)
    assert report.ids == a[:2]
    left = [d.task_id for d in app.admin.dead_letters(queue).items]
    assert left == [a[2], *b]


def test_discard_keeps_the_failed_record_and_leaves_the_list(app: App, queue: str) -> None:
    ids = _dead(app, queue, 3)
    assert app.admin.discard(queue, ids=ids[:2], dry_run=True) == 2
    assert len(app.admin.dead_letters(queue).items) == 3
    assert app.admin.discard(queue, ids=ids[:2]) == 2
    assert [d.task_id for d in app.admin.dead_letters(queue).items] == ids[2:]
    for tid in ids[:2]:
        assert app.admin.task(tid).status == "failed"
        assert app.admin.task(tid).state == "failed"
    assert app.admin.discard(queue, ids=ids[:2]) == 0
    assert app.admin.replay(queue, ids=ids[:2]).replayed == 0


def test_retry_resends_a_failed_task_and_reports_what_it_cannot(app: App, queue: str) -> None:
    task = flaky(app, queue, failures=1)
    failed = task.delay(21)
    drain(app, [queue])
    fine = noop(app, queue).delay(1)
    drain(app, [queue])
    purged = noop(app, queue).delay(2)
    app.admin.purge(queue)

    preview = app.admin.retry_report([failed.id], dry_run=True)
    assert (preview.replayed, failed.status) == (1, TaskStatus.FAILED)
    report = app.admin.retry_report([failed.id, fine.id, purged.id, "nope"])
    assert (report.matched, report.replayed) == (4, 1)
    assert report.skipped[fine.id] == "is succeeded: only failed or cancelled tasks are retried"
    assert report.skipped["nope"] == "not found"
    assert report.skipped[purged.id].startswith("cannot be rebuilt")
    assert drain(app, [queue]) == 1
    assert failed.get(timeout=10) == 42
    assert [h["status"] for h in failed.info().history] == ["failed"]
    assert app.admin.retry([failed.id]) == 0


def test_purge_dry_run_counts_and_apply_cancels_the_records(app: App, queue: str) -> None:
    task = noop(app, queue)
    waiting = [task.delay(i) for i in range(3)]
    later = task.apply_async(countdown=3600)
    assert app.admin.purge(queue, dry_run=True) == 3
    assert app.admin.purge(queue, scheduled=True, dry_run=True) == 4
    assert len(app.admin.peek(queue)) == 3

    assert app.admin.purge(queue) == 3
    for result in waiting:
        assert result.status is TaskStatus.CANCELLED
        with pytest.raises(TaskCancelled, match="purged"):
            result.get(timeout=5)
    assert later.status is TaskStatus.SCHEDULED
    assert app.admin.purge(queue, scheduled=True) == 1
    assert later.status is TaskStatus.CANCELLED
    assert drain(app, [queue]) == 0


def test_applied_actions_are_audited_with_the_actor_and_dry_runs_are_not(
    app: App, queue: str
) -> None:
    ids = _dead(app, queue, 3)
    noop(app, queue).delay()
    alice = app.admin.as_actor("alice")
    alice.replay(queue, dry_run=True)
    alice.discard(queue, dry_run=True)
    alice.purge(queue, dry_run=True)
    assert app.admin.audit() == []

    alice.replay(queue, ids=ids[:1])
    alice.discard(queue, ids=ids[1:])
    alice.purge(queue)
    alice.pause(queue)
    entries = app.admin.audit()
    assert [(e.action, e.target, e.count) for e in entries] == [
        ("pause", queue, 0),
        ("purge", queue, 2),
        ("discard", queue, 2),
        ("replay", queue, 1),
    ]
    assert {e.actor for e in entries} == {"alice"}
    assert entries[2].ids == ids[1:]
    assert entries[3].ids == ids[:1]
    assert app.admin.audit(limit=1)[0].action == "pause"
    assert "@" in app.admin.actor


def test_reveal_shows_a_dead_letters_arguments_once_asked_and_audits_it(
    app: App, queue: str
) -> None:
    (dead_id,) = _dead(app, queue, 1)
    queued = noop(app, queue).delay()
    # Nothing else in the API shows arguments; reveal does, and says who looked.
    shown = app.admin.as_actor("carol").reveal(dead_id)
    assert shown["id"] == dead_id
    assert shown["args"] == [0]
    (entry,) = app.admin.audit()
    assert (entry.action, entry.actor, entry.ids) == ("reveal", "carol", [dead_id])
    # A task that is not a dead letter has no arguments to show.
    with pytest.raises(NotFound, match="not a dead letter"):
        app.admin.reveal(queued.id)
    with pytest.raises(NotFound, match="not found"):
        app.admin.reveal("no-such-id")
    assert len(app.admin.audit()) == 1


def test_record_audits_an_action_done_through_another_api(app: App) -> None:
    app.admin.as_actor("dave").record("schedule_pause", "nightly", details={"why": "incident"})
    (entry,) = app.admin.audit()
    assert (entry.action, entry.target, entry.actor) == ("schedule_pause", "nightly", "dave")
    assert entry.details == {"why": "incident"}


def test_a_purge_stopped_part_way_says_how_far_it_got_and_audits_that_much(
    app: App, queue: str, backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dead_module, "BATCH", 2)
    task = noop(app, queue)
    results = [task.delay(i) for i in range(5)]
    fails_after(app.kernel.broker, "purge_batch_closing", 1, monkeypatch)
    with pytest.raises(BrokerError) as caught:
        app.admin.as_actor("alice").purge(queue)
    # A broker that purges in batches (Redis; SQLite with its records in its file) stopped
    # after the first; the others purge a queue in one step, and failed at the look for
    # more.
    purged = [r.id for r in results if r.status is TaskStatus.CANCELLED]
    assert len(purged) == (2 if backend in ("redis", "sqlite") else 5)
    message = str(caught.value)
    assert (
        f"purge of {queue!r} stopped after {len(purged)} tasks purged (audited as incomplete)"
        in message
    )
    assert "may or may not have taken effect" in message
    assert message.endswith("the server stopped answering")
    [entry] = app.admin.audit()
    assert (entry.action, entry.actor, entry.count, entry.details) == (
        "purge",
        "alice",
        len(purged),
        {"incomplete": True},
    )
    assert sorted(entry.ids) == sorted(purged)
    monkeypatch.undo()
    assert app.admin.purge(queue) == 5 - len(purged)  # running it again finishes it


def test_a_replay_and_a_discard_stopped_part_way_say_how_far_they_got(
    app: App, queue: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dead_module, "BATCH", 2)
    ids = _dead(app, queue, 5)
    fails_after(app.kernel.broker, "requeue", 1, monkeypatch)
    with pytest.raises(BrokerError, match=r"replay of .* stopped after 2 tasks replayed \(audited"):
        app.admin.replay(queue)
    fails_after(app.kernel.broker, "discard_dead", 1, monkeypatch)
    with pytest.raises(BrokerError, match=r"discard of .* stopped after 2 tasks discarded \(aud"):
        app.admin.discard(queue)
    entries = app.admin.audit()
    assert [(e.action, e.count, e.details) for e in entries] == [
        ("discard", 2, {"incomplete": True}),
        ("replay", 2, {"incomplete": True}),
    ]
    assert entries[1].ids == ids[:2]
    # The letter whose requeue failed went back as it was (its record failed again).
    assert [d.task_id for d in app.admin.dead_letters(queue).items] == ids[4:]


def test_an_action_that_fails_before_doing_anything_raises_the_error_as_it_was(
    app: App, queue: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    noop(app, queue).delay()
    fails_after(app.kernel.broker, "purge_batch_closing", 0, monkeypatch)
    with pytest.raises(BrokerError, match="^the server stopped answering$"):
        app.admin.purge(queue)
    assert app.admin.audit() == []


def test_a_retry_stopped_part_way_says_how_far_it_got(
    app: App, queue: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dead_module, "BATCH", 2)
    ids = _dead(app, queue, 5)
    fails_after(app.kernel.broker, "requeue", 1, monkeypatch)
    with pytest.raises(BrokerError, match=r"^retry stopped after 2 tasks sent again \(audited"):
        app.admin.retry(ids)
    [entry] = app.admin.audit()
    assert (entry.action, entry.target, entry.ids, entry.details) == (
        "retry",
        "*",
        ids[:2],
        {"incomplete": True},
    )
    monkeypatch.undo()
    report = app.admin.retry_report(ids)  # running it again finishes it
    assert report.replayed == 3
    assert set(report.skipped) == set(ids[:2])


def test_a_purge_whose_result_store_fails_says_what_became_of_its_tasks(
    app: App, queue: str, backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    task = noop(app, queue)
    results = [task.delay(i) for i in range(3)]

    async def down(*args: Any, **kwargs: Any) -> Any:
        raise BrokerError("the result store stopped answering")

    monkeypatch.setattr(app.kernel.results, "update_many", down)
    if backend in ("redis", "sqlite"):  # closed in the step that drops the messages
        assert app.admin.purge(queue) == 3
        monkeypatch.undo()
        assert [r.status for r in results] == [TaskStatus.CANCELLED] * 3
    else:  # closed before each group is dropped: nothing dropped
        with pytest.raises(BrokerError, match="^the result store stopped answering$"):
            app.admin.purge(queue)
        monkeypatch.undo()
        assert [r.status for r in results] == [TaskStatus.QUEUED] * 3
        assert len(app.admin.peek(queue)) == 3
        assert app.admin.purge(queue) == 3
        assert [r.status for r in results] == [TaskStatus.CANCELLED] * 3


@pytest.fixture(params=["memory", "sqlite-two-files", "redis-store-elsewhere"])
def unlinked_app(request: pytest.FixtureRequest, tmp_path: Any) -> Any:
    """An app whose broker does not write its result store's records itself: the memory
    one, SQLite with its records in another file, and Redis with them in SQLite."""
    cleanup = None
    if request.param == "memory":
        application = App("purge-mem", broker="memory://")
    elif request.param == "sqlite-two-files":
        application = App(
            "purge-two",
            broker=f"sqlite:///{tmp_path / 'broker.db'}",
            results=f"sqlite:///{tmp_path / 'results.db'}",
        )
    else:
        url, prefix = redis_helpers.shared_url(lease=30)
        application = App("purge-redis", broker=url, results=f"sqlite:///{tmp_path / 'r.db'}")
        cleanup = functools.partial(redis_helpers.drop_prefix, url, prefix)
    yield application
    application.close()
    if cleanup is not None:
        cleanup()


def test_a_purge_that_cannot_close_records_drops_nothing(
    unlinked_app: App, queue: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The records are closed before the messages are dropped: a result store that fails
    leaves no record saying queued for a message that is gone."""
    app = unlinked_app
    task = noop(app, queue)
    results = [task.delay(i) for i in range(3)]
    later = task.apply_async(args=(9,), countdown=3600)

    async def down(*args: Any, **kwargs: Any) -> Any:
        raise BrokerError("the result store stopped answering")

    monkeypatch.setattr(app.kernel.results, "update_many", down)
    with pytest.raises(BrokerError, match="^the result store stopped answering$"):
        app.admin.purge(queue, scheduled=True)
    monkeypatch.undo()
    assert [r.status for r in results] == [TaskStatus.QUEUED] * 3
    assert later.status is TaskStatus.SCHEDULED
    assert len(app.admin.peek(queue)) == 3
    assert app.admin.purge(queue, scheduled=True) == 4
    assert [r.status for r in [*results, later]] == [TaskStatus.CANCELLED] * 4
    assert drain(app, [queue]) == 0


def test_a_message_leased_while_a_purge_closes_its_record_is_not_run(
    unlinked_app: App, queue: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = unlinked_app
    ran: list[int] = []

    @app.task(name=f"counted.{queue}", queue=queue)
    def counted(x: int) -> int:
        ran.append(x)
        return x

    results = [counted.delay(i) for i in range(3)]
    broker, store = app.kernel.broker, app.kernel.results
    real = store.update_many
    leased: list[Any] = []

    async def close_while_a_worker_takes_one(*args: Any, **kwargs: Any) -> Any:
        # A worker leases a message between the purge's look and its drop.
        leased.extend(await broker.fetch([queue], 1, 0.0))
        return await real(*args, **kwargs)

    monkeypatch.setattr(store, "update_many", close_while_a_worker_takes_one)
    purged = app.admin.purge(queue)
    monkeypatch.undo()
    assert len(leased) == 1 and purged == 2  # the leased one was not dropped
    assert [r.status for r in results] == [TaskStatus.CANCELLED] * 3
    # Handed back (its worker stopped): a worker settles it without running it.
    assert app.kernel.call(leased[0].nack(requeue=True))
    drain(app, [queue])
    assert ran == []
    assert app.admin.peek(queue) == []
    assert [r.status for r in results] == [TaskStatus.CANCELLED] * 3


def test_one_task_id_given_as_a_string_is_refused_naming_the_fix(app: App, queue: str) -> None:
    # Read letter by letter it would name other tasks.
    with pytest.raises(ConfigError, match=r"ids must be a list of names.*use \['abc'\]"):
        app.admin.replay(queue, ids="abc")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"task_ids must be a list of names.*use \['abc'\]"):
        app.admin.retry("abc")  # type: ignore[arg-type]
    assert app.admin.audit() == []
