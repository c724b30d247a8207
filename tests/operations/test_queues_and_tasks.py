"""``app.admin`` queues, peek, task, cancel, pause/resume, on every backend."""

from __future__ import annotations

import pytest

from taskflow import App
from taskflow.errors import NotFound, UnknownQueue, Unsupported
from taskflow.message import TaskStatus
from taskflow.operations import QueueInfo
from taskflow.testing import drain

from .conftest import NewApp
from .helpers import flaky, noop


def test_queues_counts_every_state_and_the_pause_flag(app: App, queue: str) -> None:
    task = noop(app, queue)
    bad = flaky(app, queue, failures=5, name=f"bad.{queue}")
    bad.delay(1)
    drain(app, [queue])
    task.delay(1)
    task.delay(2)
    task.apply_async(countdown=3600)
    app.admin.pause(queue)

    (info,) = [q for q in app.admin.queues() if q.name == queue]
    assert info == QueueInfo(queue, ready=2, scheduled=1, running=0, dead=1, paused=True)
    assert queue in app.admin.paused()
    app.admin.resume(queue)
    assert queue not in app.admin.paused()
    assert drain(app, [queue]) == 2


def test_a_paused_queue_delivers_nothing_until_resumed(app: App, queue: str) -> None:
    task = noop(app, queue)
    result = task.delay(3)
    app.admin.pause(queue)
    assert drain(app, [queue]) == 0
    app.admin.resume(queue)
    assert drain(app, [queue]) == 1
    assert result.get(timeout=10) == 3


def test_an_unknown_queue_is_an_error_naming_the_known_ones(app: App, queue: str) -> None:
    noop(app, queue).delay()
    message = f"no queue 'nope' (known: {queue})"
    calls = [
        lambda: app.admin.peek("nope"),
        lambda: app.admin.purge("nope"),
        lambda: app.admin.pause("nope"),
        lambda: app.admin.dead_letters("nope"),
        lambda: app.admin.replay("nope"),
        lambda: app.admin.discard("nope"),
    ]
    for call in calls:
        with pytest.raises(UnknownQueue) as err:
            call()
        assert str(err.value) == message
        assert isinstance(err.value, NotFound)


def test_peek_shows_waiting_tasks_in_delivery_order_with_offset(app: App, queue: str) -> None:
    task = noop(app, queue)
    low = [task.delay(i) for i in range(3)]
    high = task.apply_async(args=(9,), priority=9)
    later = task.apply_async(args=(1,), countdown=3600)

    ready = app.admin.peek(queue)
    assert [t.id for t in ready] == [high.id, *(r.id for r in low)]
    assert {(t.task, t.state, t.status) for t in ready} == {(task.name, "ready", "queued")}
    assert ready[0].priority == 9
    assert [t.id for t in app.admin.peek(queue, limit=2, offset=1)] == [low[0].id, low[1].id]
    (scheduled,) = app.admin.peek(queue, state="scheduled")
    assert (scheduled.id, scheduled.state, scheduled.status) == (later.id, "scheduled", "scheduled")
    assert scheduled.eta is not None
    # Peeking removed nothing.
    assert drain(app, [queue]) == 4


def test_peek_dead_shows_dead_letters_with_their_records(app: App, queue: str) -> None:
    bad = flaky(app, queue, failures=5)
    results = [bad.delay(i) for i in range(3)]
    drain(app, [queue])
    dead = app.admin.peek(queue, state="dead", offset=1)
    assert [t.id for t in dead] == [r.id for r in results[1:]]
    assert {(t.state, t.status) for t in dead} == {("dead", "failed")}
    assert dead[0].error is not None and dead[0].error["type"] == "ValueError"


def test_peek_running_lists_leased_messages_or_says_the_backend_cannot(
    app: App, queue: str, backend: str
) -> None:
    task = noop(app, queue)
    result = task.delay(1)
    app.kernel.call(app.kernel.declare(queue))
    (delivery,) = app.kernel.call(app.broker.fetch([queue], 1, 5.0))
    if backend == "nats":
        with pytest.raises(Unsupported, match="the nats broker cannot list running tasks"):
            app.admin.peek(queue, state="running")
    else:
        (running,) = app.admin.peek(queue, state="running")
        assert (running.id, running.state) == (result.id, "running")
    assert app.kernel.call(delivery.nack())


def test_peek_rejects_an_unknown_state(app: App, queue: str) -> None:
    noop(app, queue).delay()
    with pytest.raises(ValueError, match="state must be one of ready, scheduled, running, dead"):
        app.admin.peek(queue, state="done")


def test_task_shows_the_record_and_history_and_where_it_is(app: App, queue: str) -> None:
    bad = flaky(app, queue, failures=1)
    result = bad.delay(21)
    drain(app, [queue])
    info = app.admin.task(result.id)
    assert (info.task, info.queue, info.state, info.status) == (bad.name, queue, "dead", "failed")
    assert info.history == []
    app.admin.replay(queue)
    drain(app, [queue])
    info = app.admin.task(result.id)
    assert (info.state, info.status) == ("succeeded", "succeeded")
    assert [h["status"] for h in info.history] == ["failed"]


def test_task_and_cancel_of_an_unknown_id_raise_not_found(app: App) -> None:
    with pytest.raises(NotFound, match="task 'no-such-id' not found"):
        app.admin.task("no-such-id")
    with pytest.raises(NotFound, match="task 'no-such-id' not found"):
        app.admin.cancel("no-such-id")


def test_cancel_stops_a_queued_task_from_running(app: App, queue: str) -> None:
    task = noop(app, queue)
    result = task.delay(1)
    assert app.admin.cancel(result.id) is True
    assert result.status is TaskStatus.CANCELLED
    drain(app, [queue])
    assert result.status is TaskStatus.CANCELLED
    assert app.admin.cancel(result.id) is False  # finished already
    (entry,) = [e for e in app.admin.audit() if e.action == "cancel"]
    assert entry.ids == [result.id]


def test_queues_of_another_namespace_are_not_listed(new_app: NewApp, queue: str) -> None:
    first, second = new_app(), new_app()
    noop(first, queue).delay()
    assert queue in [q.name for q in first.admin.queues()]
    if first.broker.url != "memory://":  # every memory app has its own broker anyway
        assert queue not in [q.name for q in second.admin.queues()]
