"""At least once with leases, with real ``taskflow worker`` processes on Redis and NATS.

A worker that is SIGKILLed mid-task loses its lease; the broker delivers the task again and
another worker completes it as the same attempt (``retries`` untouched, ``ctx.delivery``
counts the loss). A task declared ``on_lost="fail"`` is dead-lettered ``worker_lost``
instead. And a short lease is renewed in time: a task three times longer than its lease
runs exactly once even with a second worker waiting for work.
"""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from taskflow import App, TaskFailed, TaskStatus
from tests.integration import nats_helpers, redis_helpers

pytestmark = [pytest.mark.integration, pytest.mark.slow]

LEASE = 2.0


@dataclass
class Backend:
    """One server under a fresh prefix, with its worker processes."""

    url: str
    start: Callable[[], subprocess.Popen[bytes]]
    runs: Callable[[str], list[int]]
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def worker(self) -> subprocess.Popen[bytes]:
        proc = self.start()
        self.workers.append(proc)
        return proc


@pytest.fixture(params=["redis", "nats"])
def make_backend(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Callable[[float], Backend]]:
    made: list[tuple[Backend, str]] = []

    def make(lease: float) -> Backend:
        if request.param == "redis":
            url, prefix = redis_helpers.shared_url(lease=lease)
            backend = Backend(
                url,
                lambda: redis_helpers.start_worker(url),
                lambda tid: redis_helpers.runs(url, prefix, tid),
            )
        else:
            url, prefix = nats_helpers.shared_url(lease=lease)
            backend = Backend(
                url,
                lambda: nats_helpers.start_worker(url, tmp_path),
                lambda tid: nats_helpers.runs(tmp_path, tid),
            )
        made.append((backend, prefix))
        return backend

    yield make
    for backend, prefix in made:
        for proc in backend.workers:
            redis_helpers.stop(proc)
        if request.param == "redis":
            redis_helpers.drop_prefix(backend.url, prefix)
        else:
            nats_helpers.drop_prefix(backend.url, prefix)


def _kill_while_running(backend: Backend, task_id: str) -> subprocess.Popen[bytes]:
    first = backend.workers[0]
    redis_helpers.wait_until(lambda: backend.runs(task_id), 20, "the first run to start")
    first.send_signal(signal.SIGKILL)
    first.wait(10)
    return first


def test_a_task_without_retries_whose_worker_was_killed_completes_on_another_worker(
    make_backend: Callable[[float], Backend],
) -> None:
    backend = make_backend(LEASE)
    backend.worker()
    with App("producer", broker=backend.url) as app:
        result = app.send_task("it.delivery", args=(1.5,))  # retries=0
        first = _kill_while_running(backend, result.id)
        second = backend.worker()
        assert result.get(timeout=LEASE + 15) == [second.pid, 1, 2]
        assert result.status is TaskStatus.SUCCEEDED
        assert result.info().attempts == 1
        assert backend.runs(result.id) == [first.pid, second.pid]
        assert app.kernel.call(app.broker.dead_letters("default")) == []  # type: ignore[attr-defined]


@pytest.mark.parametrize("producer_knows", [False, True], ids=["by-name", "declared"])
def test_a_task_declared_on_lost_fail_is_dead_lettered_when_its_worker_is_killed(
    make_backend: Callable[[float], Backend], producer_knows: bool
) -> None:
    backend = make_backend(LEASE)
    backend.worker()
    with App("producer", broker=backend.url) as app:
        if producer_knows:
            # Then the message itself allows one delivery and the broker dead-letters it;
            # sent by name, the worker that receives the redelivery does.
            @app.task(name="it.once", on_lost="fail")
            def once(seconds: float) -> int:
                raise AssertionError("runs in the worker")

        result = app.send_task("it.once", args=(1.5,))
        first = _kill_while_running(backend, result.id)
        backend.worker()
        with pytest.raises(TaskFailed) as info:
            result.get(timeout=LEASE + 15)
        assert info.value.exc_type == "taskflow.errors.WorkerLost"
        assert result.status is TaskStatus.FAILED
        assert backend.runs(result.id) == [first.pid]  # never ran twice
        dead = app.kernel.call(app.broker.dead_letters("default"))  # type: ignore[attr-defined]
        assert [(d.id, d.reason) for d in dead] == [(result.id, "worker_lost")]


def test_a_task_longer_than_a_one_second_lease_runs_exactly_once_with_two_workers(
    make_backend: Callable[[float], Backend],
) -> None:
    backend = make_backend(1.0)
    workers = [backend.worker(), backend.worker()]
    with App("producer", broker=backend.url) as app:
        result = app.send_task("it.delivery", args=(2.5,))
        assert result.get(timeout=20)[1:] == [1, 1]  # attempt 1, first delivery
        assert len(backend.runs(result.id)) == 1
        assert backend.runs(result.id)[0] in {w.pid for w in workers}
