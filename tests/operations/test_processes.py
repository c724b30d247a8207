"""A dead letter replayed through ``app.admin`` is run by a real ``taskflow worker``
process (Redis), and that worker shows in ``adm.workers()`` through its heartbeat."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from taskflow import App
from taskflow.message import TaskStatus
from taskflow.testing import drain
from tests.integration import redis_helpers


@pytest.fixture
def redis_app() -> Iterator[tuple[App, str, str]]:
    """An app on a fresh Redis prefix, with its URL and prefix; dropped after."""
    url, prefix = redis_helpers.shared_url(lease=30)
    app = App("redisit", broker=url)
    try:
        yield app, url, prefix
    finally:
        app.close()
        redis_helpers.drop_prefix(url, prefix)


def test_a_replayed_dead_letter_runs_in_a_worker_process(redis_app: tuple[App, str, str]) -> None:
    app, url, prefix = redis_app

    # Same name as the worker app's task, but this process's copy fails: a dead letter.
    @app.task(name="it.add")
    def add(x: int, y: int) -> int:
        raise RuntimeError("broken deploy")

    result = add.delay(1, 2)
    drain(app, ["default"])
    assert result.status is TaskStatus.FAILED
    assert app.admin.replay("default").replayed == 1

    proc = redis_helpers.start_worker(url, concurrency=1)
    try:
        assert result.get(timeout=30) == 3
        assert redis_helpers.runs(url, prefix, result.id) == [proc.pid]
        redis_helpers.wait_until(
            lambda: [w.pid for w in app.admin.workers()] == [proc.pid], 30, "a heartbeat"
        )
        (worker,) = app.admin.workers()
        assert (worker.state, worker.queues) == ("alive", ["default"])
    finally:
        redis_helpers.stop(proc)
    info = app.admin.task(result.id)
    assert (info.status, info.state) == ("succeeded", "succeeded")
    assert [h["status"] for h in info.history] == ["failed"]
    assert info.history[0]["error"]["message"] == "broken deploy"
