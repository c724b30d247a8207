"""At least once on RabbitMQ, with real ``taskflow worker`` processes and a real server.

A worker SIGKILLed mid-task: RabbitMQ puts the unacked message back (``redelivered``), a
second worker completes it as the same attempt, counted as one lost delivery; a task
declared ``on_lost="fail"`` is dead-lettered ``worker_lost`` instead. A worker whose broker
connection the server closes (``rabbitmqctl close_connection``) reconnects, resumes
consuming, and every task completes; only a task that was running at the cut may run twice.
"""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from taskflow import App, TaskFailed, TaskStatus
from tests.amqp import amqp_helpers as h
from tests.integration.redis_helpers import stop, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@dataclass
class Setup:
    broker: str
    results: str
    prefix: str
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def worker(self, concurrency: int = 2) -> subprocess.Popen[bytes]:
        proc = h.start_worker(self.broker, self.results, concurrency)
        self.workers.append(proc)
        return proc


@pytest.fixture
def setup() -> Iterator[Setup]:
    broker, results, prefix = h.shared_urls(lease=30.0)
    made = Setup(broker, results, prefix)
    yield made
    for proc in made.workers:
        stop(proc)
    h.drop(prefix, {"default"})


def _kill_while_running(setup: Setup, task_id: str) -> subprocess.Popen[bytes]:
    first = setup.workers[0]
    wait_until(lambda: h.runs(setup.prefix, task_id), 30, "the first run to start")
    first.send_signal(signal.SIGKILL)
    first.wait(10)
    return first


def test_a_task_whose_worker_was_killed_is_redelivered_and_completed_once(setup: Setup) -> None:
    setup.worker()
    with App("producer", broker=setup.broker, results=setup.results) as app:
        result = app.send_task("it.delivery", args=(1.5,))  # retries=0
        first = _kill_while_running(setup, result.id)
        second = setup.worker()
        # Same attempt, second delivery: the loss did not spend a retry.
        assert result.get(timeout=30) == [second.pid, 1, 2]
        assert result.status is TaskStatus.SUCCEEDED
        assert h.runs(setup.prefix, result.id) == [first.pid, second.pid]
        assert app.kernel.call(app.broker.dead_letters("default")) == []  # type: ignore[attr-defined]


def test_a_task_declared_on_lost_fail_is_dead_lettered_when_its_worker_is_killed(
    setup: Setup,
) -> None:
    setup.worker()
    with App("producer", broker=setup.broker, results=setup.results) as app:
        result = app.send_task("it.once", args=(1.5,))
        first = _kill_while_running(setup, result.id)
        setup.worker()
        with pytest.raises(TaskFailed) as info:
            result.get(timeout=30)
        assert info.value.exc_type == "taskflow.errors.WorkerLost"
        assert h.runs(setup.prefix, result.id) == [first.pid]  # never ran twice
        dead = app.kernel.call(app.broker.dead_letters("default"))  # type: ignore[attr-defined]
        assert [(d.id, d.reason) for d in dead] == [(result.id, "worker_lost")]


def test_a_worker_whose_connection_is_closed_reconnects_and_loses_nothing(setup: Setup) -> None:
    worker = setup.worker(concurrency=4)
    with App("producer", broker=setup.broker, results=setup.results) as app:
        results = [app.send_task("it.sleep", args=(0.2,)) for _ in range(40)]
        wait_until(lambda: h.runs(setup.prefix, results[3].id), 30, "the worker to start")
        assert h.close_connections(setup.prefix, worker.pid) == 1
        # The same process finishes everything on a new connection.
        assert [r.get(timeout=60) for r in results] == [worker.pid] * 40
        assert worker.poll() is None
        wait_until(
            lambda: len(h.connections_of(setup.prefix, worker.pid)) == 1, 30, "a new connection"
        )
        counts = [len(h.runs(setup.prefix, r.id)) for r in results]
        assert all(count >= 1 for count in counts)
        # At least once: only the tasks running at the cut (4 slots) may have run again.
        assert sum(counts) - len(counts) <= 4
