"""Declaring periodic tasks on the App, and changing stored schedules at run time."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest

from taskflow import App, FakeClock, PayloadError
from taskflow.errors import ConfigError, NotFound
from tests.beat.conftest import START, AppFactory, queued_ids


def names(app: App) -> dict[str, tuple[str, bool]]:
    return {i.schedule.name: (i.source, i.paused) for i in app.schedules.list()}


# -- declaring ----------------------------------------------------------------------------
def test_periodic_registers_the_function_as_a_task_and_declares_its_schedule(
    make_app: AppFactory,
) -> None:
    app = make_app()

    @app.periodic(cron="*/5 * * * *")
    def cleanup() -> str:
        return "done"

    assert cleanup.name in app.registry
    assert cleanup() == "done"
    [info] = app.schedules.list()
    assert (info.schedule.name, info.schedule.task, info.source) == (
        cleanup.name,
        cleanup.name,
        "code",
    )


def test_periodic_accepts_an_existing_task(make_app: AppFactory) -> None:
    app = make_app()

    @app.periodic(every=timedelta(seconds=30), name="ping")
    @app.task(queue="pings")
    def ping() -> None:
        pass

    schedule = app.schedules.declared["ping"]
    assert schedule.task == ping.name and schedule.every == 30.0


def test_add_periodic_takes_a_task_or_a_registered_name(make_app: AppFactory) -> None:
    app = make_app()

    @app.task
    def report(kind: str) -> None:
        pass

    app.add_periodic(report, cron="0 * * * *", name="hourly-report", args=("sales",))
    app.add_periodic(report.name, every=30.0, name="ping", kwargs={"kind": "ping"})
    assert set(app.schedules.declared) == {"hourly-report", "ping"}


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"cron": "not a cron"}, "invalid cron expression|expected 5 fields"),
        ({"every": 0}, "every must be a positive"),
        ({"every": -1}, "every must be a positive"),
        ({}, "exactly one of cron= or every="),
        ({"cron": "* * * * *", "every": 1}, "exactly one of cron= or every="),
        ({"cron": "0 9 * * *", "timezone": "Europe/Nowhere"}, "unknown time zone"),
    ],
)
def test_a_bad_schedule_is_refused_at_declaration_and_registers_no_task(
    make_app: AppFactory, options: dict[str, object], message: str
) -> None:
    app = make_app()
    with pytest.raises(ConfigError, match=message) as caught:

        @app.periodic(name="nightly", **options)  # type: ignore[arg-type]
        def nightly() -> None:
            pass

    assert "'nightly'" in str(caught.value)
    assert len(app.registry) == 0
    assert app.schedules.declared == {}


def test_a_misspelt_schedule_option_is_a_type_error_like_any_keyword(
    make_app: AppFactory,
) -> None:
    app = make_app()

    @app.task
    def job() -> None:
        pass

    with pytest.raises(TypeError, match="periodic\\(\\) got an unexpected keyword argument 'evry'"):
        app.periodic(evry=10)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="unexpected keyword argument 'evry'"):
        app.add_periodic(job, evry=10)  # type: ignore[call-arg]
    assert app.schedules.declared == {}


def test_add_periodic_with_an_unknown_task_name_is_refused(make_app: AppFactory) -> None:
    app = make_app()
    with pytest.raises(ConfigError, match="no task named 'shop.missing' is registered"):
        app.add_periodic("shop.missing", every=10, name="ghost")


def test_arguments_that_do_not_fit_the_task_are_refused_at_declaration(
    make_app: AppFactory,
) -> None:
    app = make_app()

    @app.task
    def resize(width: int) -> None:
        pass

    with pytest.raises(PayloadError, match="width"):
        app.add_periodic(resize, every=10, args=("wide",))


def test_a_schedule_name_cannot_be_declared_twice(make_app: AppFactory) -> None:
    app = make_app()

    @app.task
    def job() -> None:
        pass

    app.add_periodic(job, every=10, name="job")
    with pytest.raises(ConfigError, match="already declared"):
        app.add_periodic(job, every=20, name="job")


def test_declaring_at_module_level_touches_no_backend(make_app: AppFactory) -> None:
    app = make_app()

    @app.periodic(every=10)
    def job() -> None:
        pass

    app.add_periodic(job, every=20, name="job2")
    assert app.remove_periodic("job2") is True
    assert not app.kernel.connected and not app.kernel.loop.started


# -- stored at run time -------------------------------------------------------------------
def declare_report(app: App) -> None:
    @app.task(name="shop.report")
    def report(kind: str) -> None:
        pass


def test_schedules_added_at_run_time_are_stored_and_seen_by_a_new_beat(
    make_app: AppFactory, clock: FakeClock
) -> None:
    app = make_app()
    declare_report(app)
    beat = app.beat()
    beat.tick()  # the app is running now
    app.add_periodic("shop.report", every=10, name="report", args=("sales",))
    assert names(app) == {"report": ("stored", False)}

    restarted = make_app()  # another process: it declares the task, not the schedule
    declare_report(restarted)
    assert names(restarted) == {"report": ("stored", False)}
    new_beat = restarted.beat()
    new_beat.tick()
    clock.advance(10)
    assert [f.task_id for f in beat.tick() + new_beat.tick()] == [f"beat:report:{int(START + 10)}"]


def test_the_running_beat_sees_stored_changes(make_app: AppFactory, clock: FakeClock) -> None:
    app = make_app()
    declare_report(app)
    beat = app.beat()
    beat.tick()
    admin = make_app()  # e.g. a web process or the command line
    declare_report(admin)
    admin.add_periodic("shop.report", every=10, name="report", args=("a",), persist=True)
    beat.tick()
    clock.advance(10)
    assert len(beat.tick()) == 1

    admin.pause_periodic("report")
    assert names(app) == {"report": ("stored", True)}
    clock.advance(10)
    assert beat.tick() == []
    admin.resume_periodic("report")
    clock.advance(10)
    assert len(beat.tick()) == 1

    assert admin.remove_periodic("report") is True
    assert admin.remove_periodic("report") is False
    clock.advance(10)
    assert beat.tick() == []
    assert names(app) == {}
    assert len(queued_ids(app)) == 2


def test_a_changed_stored_schedule_takes_effect_at_the_next_tick(
    make_app: AppFactory, clock: FakeClock
) -> None:
    app = make_app()
    declare_report(app)
    beat = app.beat()
    beat.tick()
    app.add_periodic("shop.report", every=100, name="report", args=("a",))
    beat.tick()
    app.add_periodic("shop.report", every=5, name="report", args=("a",))  # an update
    clock.advance(5)
    assert [f.fire_ts - START for f in beat.tick()] == [5.0]


def test_pausing_an_unknown_schedule_raises_not_found(make_app: AppFactory) -> None:
    app = make_app()
    with pytest.raises(NotFound, match="ghost"):
        app.pause_periodic("ghost")


def test_pausing_a_schedule_declared_in_code_is_stored(
    make_app: AppFactory, clock: FakeClock
) -> None:
    app = make_app()

    @app.periodic(every=10, name="tidy")
    def tidy() -> None:
        pass

    app.pause_periodic("tidy")
    other = make_app()

    @other.periodic(every=10, name="tidy")
    def tidy_again() -> None:
        pass

    assert names(other) == {"tidy": ("code", True)}
    beat = other.beat()
    beat.tick()
    clock.advance(10)
    assert beat.tick() == []


def test_a_stored_schedule_cannot_shadow_one_declared_in_code(make_app: AppFactory) -> None:
    app = make_app()

    @app.periodic(every=10, name="tidy")
    def tidy() -> None:
        pass

    with pytest.raises(ConfigError, match="declared in code"):
        app.add_periodic(tidy, every=5, name="tidy", persist=True)


def test_stored_schedules_need_json_safe_arguments(make_app: AppFactory) -> None:
    app = make_app()

    @app.task
    def at(when: timedelta) -> None:
        pass

    with pytest.raises(ConfigError, match="JSON-safe"):
        app.add_periodic(at, every=5, name="at", args=(timedelta(seconds=1),), persist=True)


def test_threads_asking_for_the_schedules_at_once_share_one_registry(
    make_app: AppFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The registry is built on first use (a worker without schedules never loads the
    # beat): threads that ask together must not each build one and lose what another
    # declared in its own. A slow build widens the window a lock must close.
    import taskflow.beat

    built = []
    real = taskflow.beat.PeriodicRegistry

    def slow_registry(kernel: object) -> object:
        built.append(kernel)
        time.sleep(0.05)
        return real(kernel)  # type: ignore[arg-type]

    monkeypatch.setattr(taskflow.beat, "PeriodicRegistry", slow_registry)
    app = make_app()
    start = threading.Barrier(6)

    def ask() -> object:
        start.wait(5)
        return app.schedules

    with ThreadPoolExecutor(6) as pool:
        registries = list(pool.map(lambda _: ask(), range(6)))

    assert len(built) == 1
    assert all(r is registries[0] for r in registries)
