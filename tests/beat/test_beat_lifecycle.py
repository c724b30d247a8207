"""An embedded beat running in the background: start, stop, context manager, hand-over."""

from __future__ import annotations

import threading

import pytest

from taskflow import FakeClock, TaskEvent
from taskflow.errors import TaskflowError
from tests.beat.conftest import START, AppFactory


def test_an_embedded_beat_enqueues_due_runs_until_stopped(
    make_app: AppFactory, clock: FakeClock
) -> None:
    app = make_app()
    queued = threading.Event()
    seen: list[str] = []

    @app.periodic(every=10, name="ping")
    def ping() -> None:
        pass

    @app.hook("queued")
    def on_queued(event: TaskEvent) -> None:
        seen.append(event.task_id)
        queued.set()

    with app.beat(max_interval=0.01) as beat:
        assert beat.is_leader  # start() returns after the first tick
        clock.advance(10)
        assert queued.wait(10), "the running beat did not enqueue the due run"
    assert seen == [f"beat:ping:{int(START + 10)}"]
    beat.stop()  # idempotent


def test_stop_gives_up_leadership_so_another_beat_leads_at_once(make_app: AppFactory) -> None:
    first, second = make_app(), make_app()
    beat = first.beat(max_interval=0.01, lease=60.0)
    beat.start()
    other = second.beat(lease=60.0)
    other.tick()
    assert not other.is_leader
    beat.stop()
    beat.stop()
    other.tick()
    assert other.is_leader


def test_a_beat_starts_once_and_tick_is_only_for_a_beat_not_started(
    make_app: AppFactory,
) -> None:
    app = make_app()
    beat = app.beat(max_interval=0.01)
    beat.start()
    try:
        with pytest.raises(TaskflowError, match="already started"):
            beat.start()
        with pytest.raises(TaskflowError, match="not started"):
            beat.tick()
    finally:
        beat.stop()


def test_stop_before_start_and_stop_from_many_threads_are_harmless(
    make_app: AppFactory,
) -> None:
    app = make_app()
    app.beat().stop()
    beat = app.beat(max_interval=0.01).start()
    stoppers = [threading.Thread(target=beat.stop) for _ in range(5)]
    for thread in stoppers:
        thread.start()
    for thread in stoppers:
        thread.join(10)
    assert not any(t.is_alive() for t in stoppers)


@pytest.mark.parametrize("option", [{"lease": 0}, {"lease": -1.0}, {"max_interval": 0}])
def test_bad_beat_options_are_refused(make_app: AppFactory, option: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="positive"):
        make_app().beat(**option)
