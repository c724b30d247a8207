"""App.events(): finish events of every worker of the app, in order of completion."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from taskflow import App, TaskStatus
from tests.conftest import require_service


def _collect(sub, count: int) -> list:  # type: ignore[no-untyped-def]
    return [sub.get(timeout=10) for _ in range(count)]


def test_app_events_sees_the_finish_events_of_every_worker_in_process(app: App) -> None:
    @app.task
    def double(x: int) -> int:
        return 2 * x

    sub = app.events(buffer=50)
    with app.worker(concurrency=1), app.worker(concurrency=1):
        results = [double.delay(i) for i in range(6)]
        events = _collect(sub, 6)
    sub.close()
    assert {e.task_id for e in events} == {r.id for r in results}
    assert {e.kind for e in events} == {"finish"}
    assert sorted(e.result for e in events) == [0, 2, 4, 6, 8, 10]


def test_a_closed_app_subscription_receives_nothing_more(app: App) -> None:
    @app.task
    def noop() -> None:
        return None

    sub = app.events()
    sub.close()
    with app.worker(concurrency=1):
        noop.delay().get(timeout=5)
    with pytest.raises(TimeoutError):
        sub.get(timeout=0.05)


@pytest.fixture
def redis_app() -> Iterator[App]:
    require_service("redis", "127.0.0.1", 6379)
    prefix = f"tfevents{uuid.uuid4().hex[:8]}"
    application = App("events", broker=f"redis://127.0.0.1:6379/0?prefix={prefix}")
    yield application
    import redis

    client = redis.Redis.from_url("redis://127.0.0.1:6379/0")
    for key in client.scan_iter(match=f"*{prefix}*", count=1000):
        client.delete(key)
    client.close()
    application.close()


def test_app_events_on_redis_arrive_through_pubsub_with_typed_results(redis_app: App) -> None:
    @redis_app.task
    def square(x: int) -> int:
        return x * x

    @redis_app.task
    def broken() -> None:
        raise ValueError("no")

    sub = redis_app.events(buffer=50)
    with redis_app.worker(concurrency=2):
        ok = [square.delay(i) for i in range(3)]
        bad = broken.delay()
        events = _collect(sub, 4)
    sub.close()
    by_id = {e.task_id: e for e in events}
    assert {r.id for r in ok} | {bad.id} == set(by_id)
    assert [by_id[r.id].result for r in ok] == [0, 1, 4]
    assert by_id[bad.id].status == TaskStatus.FAILED.value
    assert by_id[bad.id].error is not None and by_id[bad.id].error["type"] == "ValueError"
