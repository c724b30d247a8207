"""Workers and beats share one lifecycle (``taskflow.kernel.Service``): new -> running ->
stopping -> stopped, a single start, idempotent stops from any thread, registration with
the kernel while running, and groups stopped in reverse order."""

from __future__ import annotations

import threading

import pytest

from taskflow import App
from taskflow.errors import TaskflowError
from taskflow.kernel import ServiceGroup


def test_a_worker_goes_from_new_to_running_to_stopped_and_starts_once(app: App) -> None:
    worker = app.worker(concurrency=1)
    assert worker.state == "new"
    worker.start()
    try:
        assert worker.state == "running"
        assert worker in app.kernel.services
        with pytest.raises(TaskflowError, match="already started"):
            worker.start()
        with pytest.raises(TaskflowError, match="not started"):
            worker.run_until_idle()
    finally:
        worker.stop()
    assert worker.state == "stopped"
    assert worker not in app.kernel.services


def test_stops_from_many_threads_at_once_all_return_once_stopped(app: App) -> None:
    worker = app.worker(concurrency=2).start()
    calls = [worker.stop, worker.stop_now] * 4
    threads = [threading.Thread(target=call) for call in calls]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert not any(t.is_alive() for t in threads)
    assert worker.state == "stopped"
    worker.stop()  # and again, after the fact
    worker.stop_now()


def test_a_worker_stopped_before_it_started_never_runs(app: App) -> None:
    worker = app.worker()
    worker.stop_now()
    assert worker.state == "stopped"
    # It said "was already started" of a worker that never ran.
    with pytest.raises(TaskflowError, match=r"was stopped: a worker runs once; make another"):
        worker.start()


def test_closing_the_app_stops_its_running_beat_and_worker(app: App) -> None:
    worker = app.worker(concurrency=1).start()
    beat = app.beat(max_interval=0.01).start()
    assert len(app.kernel.services) == 2
    app.close()
    assert worker.state == "stopped" and beat.state == "stopped"
    assert len(app.kernel.services) == 0


def test_a_group_starts_in_order_and_stops_in_reverse_order(app: App) -> None:
    worker, beat = app.worker(concurrency=1), app.beat(max_interval=0.01)
    stopped: list[str] = []
    real_worker_stop, real_beat_stop = worker.stop, beat.stop

    def worker_stop(timeout: float = 30.0) -> None:
        stopped.append("worker")
        real_worker_stop(timeout)

    def beat_stop(timeout: float = 10.0) -> None:
        stopped.append("beat")
        real_beat_stop(timeout)

    worker.stop = worker_stop  # type: ignore[method-assign]
    beat.stop = beat_stop  # type: ignore[method-assign]
    group = ServiceGroup(worker, beat).start()
    assert worker.state == beat.state == "running"
    assert group.fatal is None
    group.stop(5.0)
    assert stopped == ["beat", "worker"]
    assert worker.state == beat.state == "stopped"
