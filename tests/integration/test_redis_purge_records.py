"""A purge on Redis, with the result store on the same server, closes the records of the
tasks it drops in the script that drops their messages: a purge whose answer is lost on
the way back (a slow server that ran it after the caller gave up), or whose result store
fails right after, leaves no record ``queued`` for a message that is gone, and a caller
waiting on one of those tasks learns it was purged (real server)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

from taskflow import App, TaskStatus
from taskflow.errors import BrokerError, TaskCancelled
from taskflow.operations import _dead as dead_module
from tests.integration.redis_helpers import fresh_url

pytestmark = pytest.mark.integration


@pytest.fixture
def app() -> Iterator[App]:
    for url in fresh_url(lease=30):
        application = App("purge-records", broker=url, result_ttl=3600.0)
        try:
            yield application
        finally:
            application.close()


def _record(app: App, task_id: str) -> Any:
    return app.kernel.lookup(lambda: app.kernel.results.get(task_id))


def _answer_lost(app: App, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Each purge batch runs on the server, then its answer is lost: the caller gets the
    BrokerError of a call that had no reply in time. The list counts the batches run."""
    admin = app.kernel.broker._admin  # type: ignore[attr-defined]
    real = admin._run
    ran = [0]

    async def lost(script: str, args: list[Any]) -> Any:
        answer = await real(script, args)
        if args[0] == "purge_batch":
            ran[0] += 1
            raise BrokerError("no reply within 5s from redis://127.0.0.1:6379/0")
        return answer

    monkeypatch.setattr(admin, "_run", lost)
    return ran


def test_a_purge_whose_answer_is_lost_has_closed_the_records_of_what_it_dropped(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert app.kernel.backends.records_linked

    @app.task(queue="q")
    def stored(x: int) -> int:
        return x

    @app.task(queue="q", store_result=False)
    def unstored(x: int) -> int:
        return x

    waiting = [stored.delay(i) for i in range(3)]
    fire_and_forget = unstored.delay(0)
    outcome: list[BaseException] = []

    def wait() -> None:
        try:
            waiting[0].get(timeout=30)
        except BaseException as exc:  # noqa: BLE001 - the test reads what it was
            outcome.append(exc)

    waiter = threading.Thread(target=wait)
    waiter.start()
    ran = _answer_lost(app, monkeypatch)
    with pytest.raises(BrokerError, match="no reply within"):
        app.admin.purge("q")
    assert ran == [1]
    [info] = app.admin.queues()
    assert info.ready == 0  # the server dropped them all the same
    for result in waiting:
        record = _record(app, result.id)
        assert (record["status"], record["reason"]) == ("cancelled", "purged")
    # A task that stores no result has no record, and the purge made none.
    assert _record(app, fire_and_forget.id) is None
    # The caller waiting on a purged task is told so at once, not at its timeout.
    waiter.join(10)
    assert not waiter.is_alive()
    [error] = outcome
    assert isinstance(error, TaskCancelled) and "purged" in str(error)


def test_a_purge_closes_its_records_though_the_result_store_fails(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dead_module, "BATCH", 2)

    @app.task(queue="q")
    def stored(x: int) -> int:
        return x

    results = [stored.delay(i) for i in range(5)]
    store = app.kernel.results

    async def down(*args: Any, **kwargs: Any) -> Any:
        raise BrokerError("the result store stopped answering")

    monkeypatch.setattr(store, "update_many", down)
    assert app.admin.purge("q") == 5
    monkeypatch.undo()
    assert [r.status for r in results] == [TaskStatus.CANCELLED] * 5


def test_a_purge_leaves_a_record_that_finished_meanwhile_as_it_is(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    @app.task(queue="q")
    def stored(x: int) -> int:
        return x

    result = stored.delay(1)
    # Its record says succeeded (a worker that finished it as the operator purged) while
    # its message is still ready: the purge drops the message and keeps the outcome.
    app.kernel.lookup(
        lambda: app.kernel.results.update(
            result.id, {"status": TaskStatus.SUCCEEDED.value, "result": 1}, 3600.0
        )
    )
    assert app.admin.purge("q") == 1
    record = _record(app, result.id)
    assert record["status"] == "succeeded" and "reason" not in record
