"""``app.admin`` on RabbitMQ, which cannot list its queues: every operation on a named
queue works (asked of that queue), and the listings cover the queues the app names and
its workers listen on. Before, every one of them raised ``Unsupported``."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from taskflow import App
from taskflow.errors import UnknownQueue
from tests.amqp import amqp_helpers as h

pytestmark = pytest.mark.integration


@pytest.fixture
def app() -> Iterator[App]:
    broker, results, prefix = h.shared_urls(lease=30)
    application = App("amqp-ops", broker=broker, results=results, queue_weights={"bulk": 1})
    yield application
    application.close()
    h.drop(prefix, {"default", "emails", "bulk", "jobs"})


def test_operations_on_a_named_queue_work(app: App) -> None:
    @app.task(name="ops.send", queue="emails")
    def send(n: int) -> int:
        return n

    for n in range(3):
        send.delay(n)
    admin = app.admin
    assert [(t.task, t.state) for t in admin.peek("emails")] == [("ops.send", "ready")] * 3
    admin.pause("emails")
    assert admin.paused() == {"emails"}
    admin.resume("emails")
    assert admin.paused() == set()
    with pytest.raises(UnknownQueue, match=r"^no queue 'nope'$"):
        admin.purge("nope")
    assert admin.purge("emails", dry_run=True) == 3
    assert admin.purge("emails") == 3
    assert [a.action for a in admin.audit()] == ["purge", "resume", "pause"]


def test_the_listings_cover_the_queues_the_app_names_and_its_workers_use(app: App) -> None:
    @app.task(name="ops.send", queue="emails")
    def send(n: int) -> int:
        return n

    send.delay(1)
    app.send_task("ops.other", queue="bulk")
    listed = {q.name: (q.ready, q.paused) for q in app.admin.queues()}
    # "default" is the app's default queue, but nothing has declared it on the server.
    assert listed == {"emails": (1, False), "bulk": (1, False)}
    app.admin.pause("bulk")
    assert {q.name: q.paused for q in app.admin.stats().queues} == {
        "emails": False,
        "bulk": True,
    }
    with app.worker(queues=["jobs"]):  # started: its heartbeat names the queue
        assert "jobs" in {q.name for q in app.admin.queues()}


def test_dead_letters_are_paged_replayed_and_discarded(app: App) -> None:
    @app.task(name="ops.fail", retries=0)
    def fail(n: int) -> None:
        raise ValueError(f"no {n}")

    sent = [fail.delay(n).id for n in range(5)]
    app.worker().run_until_idle()
    admin = app.admin
    first = admin.dead_letters("default", limit=2)
    rest = admin.dead_letters("default", limit=10, cursor=first.next_cursor)
    # In the order they failed, which the worker's threads decide.
    paged = [d.task_id for d in first.items + rest.items]
    assert len(first.items) == 2 and sorted(paged) == sorted(sent)
    assert rest.next_cursor is None
    assert admin.replay("default", ids=sent[:2]).replayed == 2
    assert {q.name: (q.ready, q.dead) for q in admin.queues()}["default"] == (2, 3)
    assert admin.discard("default", ids=sent[2:3]) == 1
    assert sorted(d.task_id for d in admin.dead_letters("default").items) == sorted(sent[3:])
