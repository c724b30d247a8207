"""``app.admin``: dead-letter replay and purge, on the memory backend and the real Redis
and NATS servers (workers run in-process with ``run_until_idle``; nothing sleeps)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from taskflow import App
from taskflow.brokers.base import BrokerAdmin
from taskflow.context import TaskContext
from taskflow.errors import TaskCancelled
from taskflow.message import TaskStatus
from taskflow.results.nats import NatsResultStore
from taskflow.testing import drain
from tests.integration import nats_helpers, redis_helpers

BACKENDS = ["memory", "redis", "nats"]


@pytest.fixture(params=BACKENDS)
def app(request: pytest.FixtureRequest) -> Iterator[App]:
    """An app on each backend (a fresh prefix on the shared servers), closed after."""
    cleanup: Any = None
    if request.param == "memory":
        url = "memory://"
    elif request.param == "redis":
        url, prefix = redis_helpers.shared_url(lease=30)
        cleanup = lambda: redis_helpers.drop_prefix(url, prefix)  # noqa: E731
    else:
        url, prefix = nats_helpers.shared_url(lease=30)
        cleanup = lambda: nats_helpers.drop_prefix(url, prefix)  # noqa: E731
    application = App(f"ops-{uuid.uuid4().hex[:6]}", broker=url, result_ttl=3600.0)
    try:
        yield application
    finally:
        application.close()
        if cleanup is not None:
            cleanup()


def _queue() -> str:
    return f"q{uuid.uuid4().hex[:8]}"


def _depth(app: App, queue: str) -> dict[str, int]:
    broker = app.broker
    assert isinstance(broker, BrokerAdmin)
    return dict(app.kernel.call(broker.depth(queue)))


def _record_ttl(app: App, task_id: str) -> float | None:
    """Seconds the stored record has left (None: kept for ever), read from the backend."""
    store: Any = app.results
    if app.results.url == "memory://":
        expires = store._expiry.get(task_id)
        return None if expires is None else expires - store.clock.time()
    if isinstance(store, NatsResultStore):
        value, _ = app.kernel.call(_raw_nats_value(store, f"r.{task_id}"))
        return None if value.get("x") is None else value["x"] - store.clock.time()
    client = redis.Redis.from_url(store._conn.client_url)
    try:
        pttl = client.pttl(store.key("r", task_id))
    finally:
        client.close()
    return None if pttl < 0 else pttl / 1000


async def _raw_nats_value(store: NatsResultStore, key: str) -> tuple[dict[str, Any], int]:
    entry = await store._bucket().get(key)
    return json.loads(entry.value or b"{}"), int(entry.revision or 0)


def _flaky(app: App, queue: str, failures: int, retries: int = 0) -> Any:
    """A task that fails its first ``failures`` runs; it records the attempt of each run."""
    attempts: list[int] = []

    @app.task(name=f"flaky.{queue}", queue=queue, retries=retries, retry_backoff=0.0, bind=True)
    def flaky(ctx: TaskContext, x: int) -> int:
        attempts.append(ctx.attempt)
        if len(attempts) <= failures:
            raise ValueError("not yet")
        return x * 2

    flaky.attempts = attempts  # type: ignore[attr-defined]
    return flaky


def test_a_replayed_dead_letter_runs_again_and_keeps_its_earlier_failure(app: App) -> None:
    queue = _queue()
    flaky = _flaky(app, queue, failures=1)
    result = flaky.delay(21)
    assert drain(app, [queue]) == 1
    assert result.status is TaskStatus.FAILED
    (letter,) = app.admin.dead_letters(queue).items
    assert (letter.task_id, letter.task, letter.reason) == (result.id, flaky.name, "failed")

    assert app.admin.replay(queue).replayed == 1

    info = result.info()
    assert (info.status, info.attempts, info.error) == (TaskStatus.QUEUED, 0, None)
    assert [h["status"] for h in info.history] == ["failed"]
    assert info.history[0]["error"]["type"] == "ValueError"
    assert app.admin.dead_letters(queue).items == []
    assert drain(app, [queue]) == 1
    assert result.get(timeout=10) == 42
    info = result.info()
    assert info.status is TaskStatus.SUCCEEDED
    assert [h["status"] for h in info.history] == ["failed"]
    assert flaky.attempts == [1, 1]


def test_a_replayed_task_gets_its_whole_retry_budget_again(app: App) -> None:
    queue = _queue()
    # retries=1: two runs fail and exhaust the budget; after the replay, one more failure
    # is retried (attempt 2) instead of dead-lettering at once as attempt 3.
    flaky = _flaky(app, queue, failures=3, retries=1)
    result = flaky.delay(1)
    drain(app, [queue])
    assert result.status is TaskStatus.FAILED
    assert app.admin.replay(queue).replayed == 1
    drain(app, [queue])
    assert result.get(timeout=10) == 2
    assert flaky.attempts == [1, 2, 1, 2]
    assert [h["attempts"] for h in result.info().history] == [2]


def test_replay_takes_only_the_ids_asked_for(app: App) -> None:
    queue = _queue()
    flaky = _flaky(app, queue, failures=2)
    first, second = flaky.delay(1), flaky.delay(2)
    drain(app, [queue])
    assert app.admin.replay(queue, ids=[second.id, "no-such-id"]).replayed == 1
    assert [d.task_id for d in app.admin.dead_letters(queue).items] == [first.id]
    assert (first.status, second.status) == (TaskStatus.FAILED, TaskStatus.QUEUED)


def test_concurrent_replays_of_one_dead_letter_make_one_live_copy(app: App) -> None:
    queue = _queue()
    flaky = _flaky(app, queue, failures=1)
    result = flaky.delay(21)
    drain(app, [queue])

    async def both() -> list[int]:
        reports = await asyncio.gather(*(app.admin.areplay(queue) for _ in range(3)))
        return [r.replayed for r in reports]

    assert sum(app.kernel.call(both())) == 1
    assert _depth(app, queue)["ready"] == 1
    info = result.info()
    assert info.status is TaskStatus.QUEUED
    assert len(info.history) == 1
    assert drain(app, [queue]) == 1
    assert result.get(timeout=10) == 42


def test_purge_cancels_the_records_of_the_purged_tasks(app: App) -> None:
    queue = _queue()

    @app.task(name=f"noop.{queue}", queue=queue)
    def noop() -> None:
        return None

    waiting = [noop.delay(), noop.delay()]
    later = noop.apply_async(countdown=3600)

    assert app.admin.purge(queue) == 2
    for result in waiting:
        info = result.info()
        assert info.status is TaskStatus.CANCELLED
        with pytest.raises(TaskCancelled, match="purged"):
            result.get(timeout=5)
        # Closed like any finished record: it expires with the app's result_ttl.
        ttl = _record_ttl(app, result.id)
        assert ttl is not None and 3500 < ttl <= 3600
    assert later.status is TaskStatus.SCHEDULED
    assert _record_ttl(app, later.id) is None

    assert app.admin.purge(queue, scheduled=True) == 1
    assert later.info().status is TaskStatus.CANCELLED
    assert _depth(app, queue) == {"ready": 0, "scheduled": 0, "inflight": 0, "dead": 0}
    assert drain(app, [queue]) == 0


def test_a_replay_whose_dead_letter_was_taken_meanwhile_gives_the_record_back() -> None:
    with App("lost-race") as app:
        queue = _queue()
        flaky = _flaky(app, queue, failures=1)
        result = flaky.delay(21)
        drain(app, [queue])
        before = result.info()

        async def taken(queue: str, messages: Any) -> list[str]:
            return []  # another replay moved the dead letter first

        broker = app.broker
        assert isinstance(broker, BrokerAdmin)
        broker.requeue = taken  # type: ignore[method-assign]
        assert app.admin.replay(queue).replayed == 0
        after = result.info()
        assert (after.status, after.attempts, after.error) == (
            before.status,
            before.attempts,
            before.error,
        )
        assert after.history == []
