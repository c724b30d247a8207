"""The beat loop through its ``tick()`` seam on a fake clock and the memory backends."""

from __future__ import annotations

import logging

import pytest

from taskflow import App, FakeClock
from tests.beat.conftest import START, AppFactory, queued_ids


def with_ping(app: App, every: float = 10.0, **options: object) -> None:
    @app.periodic(every=every, name="ping", **options)  # type: ignore[arg-type]
    def ping() -> None:
        pass


def test_a_run_is_enqueued_when_it_is_due_with_a_deterministic_id(
    make_app: AppFactory, clock: FakeClock
) -> None:
    app = make_app()
    with_ping(app)
    beat = app.beat()
    assert beat.tick() == []  # a new schedule starts from now: nothing was missed
    clock.advance(9.5)
    assert beat.tick() == []
    clock.advance(0.5)
    [firing] = beat.tick()
    assert firing.fire_ts == START + 10
    assert firing.task_id == f"beat:ping:{int(START + 10)}"
    assert queued_ids(app) == [firing.task_id]
    assert app.worker().run_until_idle() == 1


def test_ticking_twice_at_the_same_time_enqueues_once(
    make_app: AppFactory, clock: FakeClock
) -> None:
    app = make_app()
    with_ping(app)
    beat = app.beat()
    beat.tick()
    clock.advance(10)
    assert len(beat.tick()) == 1
    assert beat.tick() == []
    assert len(queued_ids(app)) == 1


def test_a_run_fired_twice_is_deduplicated_by_its_idempotency_key(
    make_app: AppFactory, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The leader dies after enqueueing but before recording the run: the next tick
    # (or the next leader) fires the same run again, under the same id and key.
    app = make_app()
    with_ping(app)
    beat = app.beat()
    beat.tick()
    clock.advance(10)
    real_set_last = beat.store.set_last

    async def crash(name: str, fire_ts: float) -> None:
        raise ConnectionError("gone")

    monkeypatch.setattr(beat.store, "set_last", crash)
    assert beat.tick() == []  # enqueued, then failed: logged, retried next tick
    monkeypatch.setattr(beat.store, "set_last", real_set_last)
    [firing] = beat.tick()  # the same run again: the enqueue returns the first one
    assert queued_ids(app) == [firing.task_id] == [f"beat:ping:{int(START + 10)}"]
    clock.advance(10)
    assert len(beat.tick()) == 1
    assert len(queued_ids(app)) == 2


def test_two_beats_on_one_store_enqueue_each_run_exactly_once(
    make_app: AppFactory, clock: FakeClock
) -> None:
    first, second = make_app(), make_app()
    for app in (first, second):
        with_ping(app, every=1.0)
    beats = [first.beat(lease=5.0), second.beat(lease=5.0)]
    fired: list[str] = []
    for _ in range(60):
        clock.advance(0.5)
        for beat in beats:
            fired += [f.task_id for f in beat.tick()]
    expected = [f"beat:ping:{int(START) + s}" for s in range(1, 31)]
    assert fired == expected
    assert queued_ids(first) == expected
    assert sum(b.is_leader for b in beats) == 1


def test_when_the_leader_dies_another_beat_takes_over_within_one_lease(
    make_app: AppFactory, clock: FakeClock
) -> None:
    first, second = make_app(), make_app()
    for app in (first, second):
        with_ping(app, every=1.0)
    leader, follower = first.beat(lease=4.0), second.beat(lease=4.0)
    leader.tick()
    follower.tick()
    assert leader.is_leader and not follower.is_leader
    clock.advance(1)
    assert len(leader.tick()) == 1
    follower.tick()
    # The leader dies (it is never ticked again) at START + 1.
    took_over_at = None
    for step in range(1, 20):
        clock.advance(0.5)
        if follower.tick() and took_over_at is None:
            took_over_at = step * 0.5
    assert follower.is_leader
    assert took_over_at is not None and took_over_at <= 4.0 + 0.5
    # Every second from the takeover on was enqueued once; the gap coalesced into one run.
    ids = queued_ids(first)
    assert len(ids) == len(set(ids))
    assert ids[-1] == f"beat:ping:{int(clock.time())}"


def test_missed_runs_after_downtime_fire_once(
    make_app: AppFactory, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    app = make_app()
    with_ping(app, every=60.0)
    app.beat().tick()
    clock.advance(3600 + 30)  # down for an hour: 60 runs missed
    restarted = make_app()
    with_ping(restarted, every=60.0)
    with caplog.at_level(logging.INFO, logger="taskflow.beat"):
        [firing] = restarted.beat().tick()
    assert firing.fire_ts == clock.time() // 60 * 60  # the most recent missed run, once
    assert "missed runs" in caplog.text
    assert len(queued_ids(app)) == 1


def test_missed_runs_are_skipped_when_asked(make_app: AppFactory, clock: FakeClock) -> None:
    app = make_app()
    with_ping(app, every=60.0, missed="skip")
    beat = app.beat()
    beat.tick()
    clock.advance(3600 + 30)
    assert beat.tick() == []
    clock.set(clock.time() // 60 * 60 + 60)
    [firing] = beat.tick()  # the next run on time fires as usual
    assert firing.fire_ts == clock.time()
    assert len(queued_ids(app)) == 1


def test_a_run_late_only_by_a_leader_handover_is_not_skipped(
    make_app: AppFactory, clock: FakeClock
) -> None:
    app = make_app()
    with_ping(app, every=60.0, missed="skip")
    beat = app.beat(lease=10.0)
    beat.tick()
    clock.advance(60 + 8)  # 8 s late: within lease + 2 * max_interval
    assert len(beat.tick()) == 1


def test_each_firing_uses_the_schedule_queue_priority_and_arguments(
    make_app: AppFactory, clock: FakeClock
) -> None:
    app = make_app()
    seen: list[tuple[int, str]] = []

    @app.periodic(every=10, args=(7,), kwargs={"label": "x"}, queue="cron", priority=9)
    def job(n: int, label: str) -> None:
        seen.append((n, label))

    beat = app.beat()
    beat.tick()
    clock.advance(10)
    [firing] = beat.tick()
    info = app.get_task(firing.task_id)
    assert (info.queue, info.priority, info.name) == ("cron", 9, job.name)
    assert app.worker(queues=["cron"]).run_until_idle() == 1
    assert seen == [(7, "x")]


def test_cron_schedule_fires_on_its_wall_clock_time(make_app: AppFactory, clock: FakeClock) -> None:
    app = make_app()

    @app.periodic(cron="*/5 * * * * *", name="five-seconds")
    def tick() -> None:
        pass

    beat = app.beat()
    beat.tick()
    fired = []
    for _ in range(20):
        clock.advance(1)
        fired += [f.fire_ts - START for f in beat.tick()]
    assert fired == [5.0, 10.0, 15.0, 20.0]


def test_a_paused_schedule_does_not_fire_and_resumes_without_catching_up(
    make_app: AppFactory, clock: FakeClock
) -> None:
    app = make_app()
    with_ping(app, every=10.0)
    beat = app.beat()
    beat.tick()
    app.pause_periodic("ping")
    for _ in range(5):
        clock.advance(10)
        assert beat.tick() == []
    app.resume_periodic("ping")
    assert beat.tick() == []  # the runs during the pause are gone, not "missed"
    clock.advance(10)
    assert [f.fire_ts - START for f in beat.tick()] == [60.0]


def test_a_schedule_that_fails_to_enqueue_is_retried_and_others_still_fire(
    make_app: AppFactory, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    app = make_app()
    with_ping(app, every=10.0)
    app.add_periodic("tests.beat.test_beat_tick.with_ping.<locals>.ping", every=10.0, name="other")
    beat = app.beat()
    beat.tick()
    clock.advance(10)
    real = app.kernel.enqueuer.enqueue
    calls = {"n": 0}

    async def flaky(prepared: list) -> list[str]:  # type: ignore[type-arg]
        calls["n"] += 1
        if calls["n"] == 1:
            raise ConnectionError("broker away")
        return await real(prepared)

    app.kernel.enqueuer.enqueue = flaky  # type: ignore[method-assign]
    with caplog.at_level(logging.WARNING, logger="taskflow.beat"):
        assert len(beat.tick()) == 1
    assert "retrying at the next tick" in caplog.text
    assert len(beat.tick()) == 1
    assert len(queued_ids(app)) == 2
