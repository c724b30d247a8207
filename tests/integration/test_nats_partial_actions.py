"""Operator actions on NATS move messages one at a time; one that fails part-way must
neither lose what it did nor do anything twice, and must say how far it got.

Before, a replay whose publish failed at its second dead letter took back the restart of
every record of the batch, the first's included: that task was live again with a record
that said it had failed, a worker settled it without running it, and its dead letter was
gone. A publish whose answer was lost raised as well, though the server had stored it.
A purge that failed part-way left the records of the messages it had dropped `queued`
for good, and a purge or discard said it had done nothing. The server's side is real;
the failures are made in the client.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from typing import Any

import nats.errors
import pytest
from nats.js.client import JetStreamContext
from nats.js.errors import APIError

from taskflow import App
from taskflow._nats.connection import API_TIMEOUT
from taskflow.errors import BrokerError
from taskflow.message import TaskStatus
from taskflow.testing import drain
from tests.integration.nats_helpers import drop_prefix, shared_url
from tests.operations.helpers import fails_after, flaky, noop

pytestmark = [pytest.mark.integration]

_REPLAYED = re.compile(r"\.y\d+$")  # the Nats-Msg-Id of a replay's publish


@pytest.fixture
def app() -> Iterator[App]:
    url, prefix = shared_url(lease=30.0)
    application = App("requeue", broker=url, result_ttl=3600.0)
    try:
        yield application
    finally:
        application.close()
        drop_prefix(url, prefix)


Publish = Callable[..., Any]


def _replay_publishes(
    monkeypatch: pytest.MonkeyPatch, each: Callable[[int, Publish], Any]
) -> list[int]:
    """Route every replay's publish through ``each(n, send)`` (``n`` counts them from 0;
    ``send()`` publishes for real); the other publishes go through unchanged. Returns the
    list of ``n`` seen."""
    real = JetStreamContext.publish
    seen: list[int] = []

    async def publish(self: JetStreamContext, subject: str, payload: bytes = b"", **kw: Any) -> Any:
        headers = kw.get("headers") or {}
        if not _REPLAYED.search(str(headers.get("Nats-Msg-Id", ""))):
            return await real(self, subject, payload, **kw)
        seen.append(len(seen))
        return await each(seen[-1], lambda: real(self, subject, payload, **kw))

    monkeypatch.setattr(JetStreamContext, "publish", publish)
    return seen


def _dead(app: App, queue: str, count: int) -> tuple[Any, list[str]]:
    """``count`` dead letters of a task that succeeds from its ``count + 1``-th run."""
    task = flaky(app, queue, failures=count)
    ids = [task.delay(i).id for i in range(count)]
    drain(app, [queue])
    assert [d.task_id for d in app.admin.dead_letters(queue).items] == ids
    return task, ids


def test_a_replay_refused_part_way_runs_what_it_sent_and_keeps_the_rest_dead(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    task, ids = _dead(app, "rq", 3)

    async def refuse_the_second(n: int, send: Publish) -> Any:
        if n == 1:
            raise APIError(code=500, description="refused")
        return await send()

    _replay_publishes(monkeypatch, refuse_the_second)
    with pytest.raises(BrokerError, match=r"replay of .* stopped after 1 tasks replayed"):
        app.admin.replay("rq")
    monkeypatch.undo()

    assert drain(app, ["rq"]) == 1
    assert len(task.attempts) == 4  # the first ran again, once
    assert app.result(ids[0]).status is TaskStatus.SUCCEEDED
    assert [app.result(i).status for i in ids[1:]] == [TaskStatus.FAILED] * 2
    assert [d.task_id for d in app.admin.dead_letters("rq").items] == ids[1:]
    assert app.admin.replay("rq").replayed == 2  # running it again finishes it
    assert drain(app, ["rq"]) == 2
    assert [app.result(i).status for i in ids] == [TaskStatus.SUCCEEDED] * 3


def test_a_replay_whose_answer_was_lost_sends_again_and_the_task_runs_once(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    task, [tid] = _dead(app, "rq", 1)

    async def store_but_lose_the_first_answer(n: int, send: Publish) -> Any:
        answer = await send()
        if n == 0:
            raise nats.errors.TimeoutError
        return answer

    seen = _replay_publishes(monkeypatch, store_but_lose_the_first_answer)
    report = app.admin.replay("rq")
    assert (report.replayed, seen) == (1, [0, 1])  # sent again, with the same message id
    monkeypatch.undo()

    assert drain(app, ["rq"]) == 1  # stored once
    assert len(task.attempts) == 2
    assert app.result(tid).status is TaskStatus.SUCCEEDED
    assert app.admin.dead_letters("rq").items == []
    assert app.admin.peek("rq") == []


def test_a_replay_left_unanswered_for_the_duplicate_window_keeps_its_dead_letter(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    task, [tid] = _dead(app, "rq", 1)
    # A window of 1 s after the last send's own bound: the sends stop a second in.
    app.kernel.broker._core.dedup_window = 2 * API_TIMEOUT + 1.0  # type: ignore[attr-defined]

    async def never_answered(n: int, send: Publish) -> Any:
        raise nats.errors.TimeoutError

    seen = _replay_publishes(monkeypatch, never_answered)
    started = time.monotonic()
    with pytest.raises(BrokerError, match="no reply in time"):
        app.admin.replay("rq")
    assert 1.0 <= time.monotonic() - started < 5.0
    assert len(seen) >= 2  # sent again while the window allowed it
    monkeypatch.undo()

    assert app.result(tid).status is TaskStatus.FAILED  # its restart taken back
    assert [d.task_id for d in app.admin.dead_letters("rq").items] == [tid]
    assert app.admin.replay("rq").replayed == 1
    assert drain(app, ["rq"]) == 1
    assert len(task.attempts) == 2


def test_a_purge_stopped_part_way_closes_the_records_of_what_it_dropped(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    task = noop(app, "pq")
    urgent = [task.apply_async(args=(i,), priority=9).id for i in range(2)]
    later = [task.apply_async(args=(i,), priority=0).id for i in range(3)]
    # The purge pulls one priority level at a time, highest first: the second pull fails.
    core = app.kernel.broker._core  # type: ignore[attr-defined]
    fails_after(core, "pull", 1, monkeypatch)
    with pytest.raises(BrokerError, match=r"purge of 'pq' stopped after 2 tasks purged \(aud"):
        app.admin.purge("pq")
    monkeypatch.undo()

    assert [app.result(i).status for i in urgent] == [TaskStatus.CANCELLED] * 2
    assert [app.result(i).status for i in later] == [TaskStatus.QUEUED] * 3
    assert sorted(t.id for t in app.admin.peek("pq")) == sorted(later)
    [entry] = app.admin.audit()
    assert (entry.action, entry.count, sorted(entry.ids)) == ("purge", 2, sorted(urgent))
    assert app.admin.purge("pq") == 3  # running it again finishes it


def test_a_discard_stopped_part_way_says_how_many_it_discarded(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, ids = _dead(app, "rq", 3)
    admin = app.kernel.broker._admin  # type: ignore[attr-defined]
    fails_after(admin, "_drop_dead", 1, monkeypatch)
    with pytest.raises(BrokerError, match=r"discard of 'rq' stopped after 1 tasks discarded"):
        app.admin.discard("rq")
    monkeypatch.undo()

    [entry] = app.admin.audit()
    assert (entry.action, entry.count, entry.ids) == ("discard", 1, ids[:1])
    assert [d.task_id for d in app.admin.dead_letters("rq").items] == ids[1:]


def test_a_second_replay_of_a_letter_whose_removal_failed_leaves_the_record_as_it_was(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    task, [tid] = _dead(app, "rq", 1)
    admin = app.kernel.broker._admin  # type: ignore[attr-defined]
    # Sent back, then its dead letter could not be removed: the task is live again.
    fails_after(admin, "_drop_dead", 0, monkeypatch)
    with pytest.raises(BrokerError, match=r"replay of 'rq' stopped after 1 tasks replayed"):
        app.admin.replay("rq")
    monkeypatch.undo()
    assert drain(app, ["rq"]) == 1
    assert app.result(tid).status is TaskStatus.SUCCEEDED
    assert [d.task_id for d in app.admin.dead_letters("rq").items] == [tid]  # left over

    # Replayed again within the duplicate window, its send stores nothing new (the
    # server holds that message id). Before, the replay counted it and left the record
    # queued for a message that was gone: a caller waiting on it waited to its timeout.
    report = app.admin.replay("rq")
    assert report.replayed == 0
    assert report.skipped == {tid: "no longer a dead letter (replayed meanwhile or sent again)"}
    assert app.result(tid).status is TaskStatus.SUCCEEDED
    assert app.admin.dead_letters("rq").items == []
    assert drain(app, ["rq"]) == 0
    assert len(task.attempts) == 2  # ran once per replay that sent it


def test_a_purge_whose_result_store_fails_drops_nothing_it_could_not_close(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    task = noop(app, "pq")
    ids = [task.delay(i).id for i in range(5)]

    async def down(*args: Any, **kwargs: Any) -> Any:
        raise BrokerError("the result store stopped answering")

    # The key-value store is the same server as the stream: it may stop answering in
    # between. Before, the messages were dropped first and their records stayed queued,
    # with nothing left for a purge run again to find.
    monkeypatch.setattr(app.kernel.results, "update_many", down)
    with pytest.raises(BrokerError, match="^the result store stopped answering$"):
        app.admin.purge("pq")
    monkeypatch.undo()

    assert [app.result(i).status for i in ids] == [TaskStatus.QUEUED] * 5
    assert sorted(t.id for t in app.admin.peek("pq")) == sorted(ids)  # handed back at once
    assert app.admin.audit() == []
    assert app.admin.purge("pq") == 5  # running it again finishes it
    assert [app.result(i).status for i in ids] == [TaskStatus.CANCELLED] * 5


def test_tasks_a_failed_purge_handed_back_run_once(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    task = flaky(app, "pq", failures=0)
    ids = [task.delay(i).id for i in range(3)]

    async def down(*args: Any, **kwargs: Any) -> Any:
        raise BrokerError("the result store stopped answering")

    monkeypatch.setattr(app.kernel.results, "update_many", down)
    with pytest.raises(BrokerError):
        app.admin.purge("pq")
    monkeypatch.undo()
    assert drain(app, ["pq"]) == 3
    assert sorted(task.attempts) == [1, 1, 1]  # each once, its delivery not used up
    assert [app.result(i).status for i in ids] == [TaskStatus.SUCCEEDED] * 3
