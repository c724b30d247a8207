"""Every outcome is announced the same way, including messages that never ran: a task
name the worker does not know and a task whose workers kept dying reach the hooks, the
worker's subscribers and the app's listeners like any other failure."""

from __future__ import annotations

from taskflow import App, FakeClock, TaskEvent
from taskflow.brokers import MemoryBroker


def test_an_unknown_task_reaches_the_failure_and_finish_hooks_and_subscribers(
    fake_app: App,
) -> None:
    seen: list[tuple[str, str]] = []
    fake_app.hook("failure")(lambda event: seen.append((event.kind, event.task_id)))
    fake_app.hook("finish")(lambda event: seen.append((event.kind, event.task_id)))
    unknown = fake_app.send_task("nobody.knows")
    worker = fake_app.worker()
    sub = worker.subscribe()
    worker.run_until_idle()

    assert seen == [("failure", unknown.id), ("finish", unknown.id)]
    event = sub.get(timeout=1)
    assert (event.kind, event.task_id, event.status) == ("finish", unknown.id, "failed")
    assert event.error is not None and event.error["type"].endswith("NotRegistered")


def test_a_task_lost_on_every_delivery_is_announced_to_the_apps_listeners(
    clock: FakeClock,
) -> None:
    broker = MemoryBroker(lease=10.0, clock=clock)
    with App("lost", broker=broker, clock=clock, max_deliveries=1) as app:

        @app.task
        def job() -> int:
            return 1

        failures: list[TaskEvent] = []
        app.hook("failure")(failures.append)
        result = job.delay()
        app.kernel.call(broker.fetch(["default"], 1, 0))  # taken by a worker that dies
        clock.advance(11.0)
        with app.events() as events:
            app.worker(concurrency=1).run_until_idle()
            finish = events.get(timeout=1)

        assert [e.task_id for e in failures] == [result.id]
        assert (finish.kind, finish.task_id, finish.status) == ("finish", result.id, "failed")
        assert finish.error is not None and finish.error["type"].endswith("WorkerLost")


def test_subscriptions_opened_and_closed_between_tasks_get_exactly_the_events_after_them(
    fake_app: App,
) -> None:
    @fake_app.task
    def job(n: int) -> int:
        return n

    worker = fake_app.worker()
    job.delay(1)
    worker.run_until_idle()  # nobody listens: nothing is built for it
    first = worker.subscribe()  # the bus now has a listener
    second_id = job.delay(2).id
    worker.run_until_idle()
    second = worker.subscribe()
    first.close()  # one of two closes: the other still listens
    third_id = job.delay(3).id
    worker.run_until_idle()
    second.close()  # the last one closes: nobody listens again
    job.delay(4)
    worker.run_until_idle()
    later = worker.subscribe()  # and a new one listens again
    fifth_id = job.delay(5).id
    worker.run_until_idle()

    assert [e.task_id for e in first if e.kind == "finish"] == [second_id]
    assert [e.task_id for e in second if e.kind == "finish"] == [third_id]
    assert later.get(timeout=1).task_id == fifth_id
    later.close()
