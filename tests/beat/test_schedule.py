"""``next_fire`` and friends: pure functions of a schedule and an instant, no clock, no I/O."""

from __future__ import annotations

import sys
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from taskflow import App
from taskflow.beat import Schedule, fire_key, latest_fire, next_fire
from taskflow.beat.cron import compile_cron
from taskflow.errors import ConfigError

BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")


def cron(expr: str, timezone: str = "UTC") -> Schedule:
    return Schedule("s", "t", cron=expr, timezone=timezone)


def fires(schedule: Schedule, start: datetime, count: int) -> list[str]:
    """The next ``count`` fire times after ``start``, as ISO text in ``start``'s zone."""
    out, t = [], start.timestamp()
    for _ in range(count):
        t = next_fire(schedule, t)
        out.append(datetime.fromtimestamp(t, start.tzinfo).isoformat())
    return out


# -- plain cron ---------------------------------------------------------------------------
def test_five_field_cron_fires_at_the_next_matching_minute() -> None:
    start = datetime(2024, 5, 1, 10, 7, 30, tzinfo=UTC)
    assert fires(cron("*/5 * * * *"), start, 3) == [
        "2024-05-01T10:10:00+00:00",
        "2024-05-01T10:15:00+00:00",
        "2024-05-01T10:20:00+00:00",
    ]


def test_next_fire_is_strictly_after_the_given_instant() -> None:
    on_the_minute = datetime(2024, 5, 1, 10, 10, tzinfo=UTC)
    assert next_fire(cron("*/5 * * * *"), on_the_minute) == on_the_minute.timestamp() + 300
    just_before = on_the_minute.timestamp() - 0.25
    assert next_fire(cron("*/5 * * * *"), just_before) == on_the_minute.timestamp()


def test_six_field_cron_has_seconds_first() -> None:
    start = datetime(2024, 5, 1, 10, 0, 0, tzinfo=UTC)
    assert fires(cron("*/20 * * * * *"), start, 4) == [
        "2024-05-01T10:00:20+00:00",
        "2024-05-01T10:00:40+00:00",
        "2024-05-01T10:01:00+00:00",
        "2024-05-01T10:01:20+00:00",
    ]
    assert fires(cron("30 0 9 * * *"), start, 1) == ["2024-05-02T09:00:30+00:00"]


def test_cron_aliases_are_understood() -> None:
    start = datetime(2024, 5, 1, 10, 7, tzinfo=UTC)
    assert fires(cron("@hourly"), start, 1) == ["2024-05-01T11:00:00+00:00"]
    assert fires(cron("@daily"), start, 1) == ["2024-05-02T00:00:00+00:00"]


def test_cron_in_a_timezone_follows_its_wall_clock() -> None:
    start = datetime(2024, 1, 15, 12, tzinfo=BERLIN)
    assert fires(cron("0 9 * * 1-5", "Europe/Berlin"), start, 2) == [
        "2024-01-16T09:00:00+01:00",
        "2024-01-17T09:00:00+01:00",
    ]


def test_next_fire_accepts_an_aware_datetime_but_not_a_naive_one() -> None:
    assert (
        next_fire(cron("0 * * * *"), datetime(2024, 5, 1, 10, 30, tzinfo=UTC))
        == datetime(2024, 5, 1, 11, tzinfo=UTC).timestamp()
    )
    with pytest.raises(ValueError, match="timezone-aware"):
        next_fire(cron("0 * * * *"), datetime(2024, 5, 1, 10, 30))


# -- DST ----------------------------------------------------------------------------------
def test_daily_run_in_the_spring_forward_gap_fires_once_at_the_end_of_the_gap() -> None:
    # Berlin 2024-03-31: 02:00 CET jumps to 03:00 CEST; 02:30 does not exist that day.
    start = datetime(2024, 3, 30, 12, tzinfo=BERLIN)
    assert fires(cron("30 2 * * *", "Europe/Berlin"), start, 3) == [
        "2024-03-31T03:00:00+02:00",
        "2024-04-01T02:30:00+02:00",
        "2024-04-02T02:30:00+02:00",
    ]


def test_frequent_cron_skips_the_missing_hour_without_duplicates() -> None:
    start = datetime(2024, 3, 31, 1, 30, tzinfo=BERLIN)
    assert fires(cron("*/15 * * * *", "Europe/Berlin"), start, 4) == [
        "2024-03-31T01:45:00+01:00",
        "2024-03-31T03:00:00+02:00",
        "2024-03-31T03:15:00+02:00",
        "2024-03-31T03:30:00+02:00",
    ]


def test_daily_run_in_the_repeated_fall_back_hour_fires_once() -> None:
    # Berlin 2024-10-27: 03:00 CEST falls back to 02:00 CET; 02:30 happens twice.
    start = datetime(2024, 10, 26, 12, tzinfo=BERLIN)
    assert fires(cron("30 2 * * *", "Europe/Berlin"), start, 2) == [
        "2024-10-27T02:30:00+02:00",
        "2024-10-28T02:30:00+01:00",
    ]


def test_wildcard_hour_cron_keeps_its_real_cadence_through_the_repeated_hour() -> None:
    start = datetime(2024, 10, 27, 1, 50, tzinfo=BERLIN)
    got = fires(cron("*/20 * * * *", "Europe/Berlin"), start, 7)
    assert got == [
        "2024-10-27T02:00:00+02:00",
        "2024-10-27T02:20:00+02:00",
        "2024-10-27T02:40:00+02:00",
        "2024-10-27T02:00:00+01:00",
        "2024-10-27T02:20:00+01:00",
        "2024-10-27T02:40:00+01:00",
        "2024-10-27T03:00:00+01:00",
    ]
    stamps = [datetime.fromisoformat(t).timestamp() for t in got]
    assert all(b - a == 1200 for a, b in zip(stamps, stamps[1:], strict=False))


def test_next_fire_from_inside_the_second_pass_of_the_repeated_hour() -> None:
    second_pass = datetime(2024, 10, 27, 2, 25, fold=1, tzinfo=BERLIN)
    assert second_pass.utcoffset() == timedelta(hours=1)
    assert fires(cron("*/20 * * * *", "Europe/Berlin"), second_pass, 2) == [
        "2024-10-27T02:40:00+01:00",
        "2024-10-27T03:00:00+01:00",
    ]
    assert fires(cron("30 2 * * *", "Europe/Berlin"), second_pass, 1) == [
        "2024-10-28T02:30:00+01:00",
    ]


def test_seconds_cron_crosses_the_fall_back_without_a_gap() -> None:
    start = datetime(2024, 10, 27, 2, 59, 30, tzinfo=BERLIN)
    assert fires(cron("*/20 * * * * *", "Europe/Berlin"), start, 3) == [
        "2024-10-27T02:59:40+02:00",
        "2024-10-27T02:00:00+01:00",
        "2024-10-27T02:00:20+01:00",
    ]


def test_new_york_spring_forward_and_fall_back() -> None:
    # 2024-03-10 02:00 EST -> 03:00 EDT; 2024-11-03 02:00 EDT -> 01:00 EST.
    spring = datetime(2024, 3, 9, 12, tzinfo=NEW_YORK)
    assert fires(cron("15 2 * * *", "America/New_York"), spring, 2) == [
        "2024-03-10T03:00:00-04:00",
        "2024-03-11T02:15:00-04:00",
    ]
    autumn = datetime(2024, 11, 2, 12, tzinfo=NEW_YORK)
    assert fires(cron("30 1 * * *", "America/New_York"), autumn, 2) == [
        "2024-11-03T01:30:00-04:00",
        "2024-11-04T01:30:00-05:00",
    ]
    hourly = datetime(2024, 11, 3, 0, 30, tzinfo=NEW_YORK)
    assert fires(cron("0 * * * *", "America/New_York"), hourly, 3) == [
        "2024-11-03T01:00:00-04:00",
        "2024-11-03T01:00:00-05:00",
        "2024-11-03T02:00:00-05:00",
    ]


# -- intervals ----------------------------------------------------------------------------
def test_interval_fires_on_multiples_of_the_interval_since_the_epoch() -> None:
    every = Schedule("s", "t", every=30.0)
    assert next_fire(every, 1_700_000_005.0) == 1_700_000_010.0
    assert next_fire(every, 1_700_000_010.0) == 1_700_000_040.0


def test_interval_accepts_a_timedelta_and_fractions_of_a_second() -> None:
    assert Schedule("s", "t", every=timedelta(minutes=2)).every == 120.0  # type: ignore[arg-type]
    half = Schedule("s", "t", every=0.5)
    assert next_fire(half, 100.2) == 100.5
    assert next_fire(half, 100.5) == 101.0


def test_latest_fire_is_the_last_run_at_or_before_an_instant() -> None:
    assert latest_fire(Schedule("s", "t", every=10.0), 1_700_000_019.9) == 1_700_000_010.0
    at = datetime(2024, 5, 1, 10, 7, 30, tzinfo=UTC)
    assert (
        latest_fire(cron("*/5 * * * *"), at) == datetime(2024, 5, 1, 10, 5, tzinfo=UTC).timestamp()
    )
    assert latest_fire(cron("0 3 1 * *"), at) == datetime(2024, 5, 1, 3, tzinfo=UTC).timestamp()
    exactly = datetime(2024, 5, 1, 10, 5, tzinfo=UTC)
    assert latest_fire(cron("*/5 * * * *"), exactly) == exactly.timestamp()


def test_fire_key_names_the_schedule_and_the_fire_time() -> None:
    assert fire_key("cleanup", 1_700_000_000.0) == "beat:cleanup:1700000000"
    assert fire_key("fast", 1_700_000_000.5) == "beat:fast:1700000000.5"


# -- validation at declaration ------------------------------------------------------------
@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"cron": "61 * * * *"}, "invalid cron expression"),
        ({"cron": "* * *"}, "expected 5 fields"),
        ({"cron": "0 0 30 2 *"}, "invalid cron expression"),
        ({"every": 0}, "every must be a positive"),
        ({"every": -5.0}, "every must be a positive"),
        ({"every": timedelta(0)}, "every must be a positive"),
        # As a countdown: past the year 9999 no date can show its next run.
        ({"every": 1e12}, r"every must be at most 100 years, got 1e\+12s"),
        ({"every": timedelta(days=365.25 * 101)}, "every must be at most 100 years"),
        ({"every": 5, "args": "sales"}, "args must be a list or tuple"),
        ({}, "exactly one of cron= or every="),
        ({"cron": "* * * * *", "every": 5}, "exactly one of cron= or every="),
        ({"cron": "* * * * *", "timezone": "Mars/Olympus"}, "unknown time zone"),
        ({"every": 5, "timezone": "Europe/Berlin"}, "cron schedules only"),
        ({"every": 5, "missed": "all"}, "missed must be"),
        ({"every": 5, "priority": 11}, "priority"),
    ],
)
def test_bad_schedules_are_refused_naming_the_schedule(
    options: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        Schedule("nightly", "t", **options)  # type: ignore[arg-type]
    assert "'nightly'" in str(caught.value)
    assert isinstance(caught.value, ValueError)


@pytest.mark.parametrize("name", ["night\nly", "night\x1b[2Jly", "nightly\r"])
def test_a_schedule_name_with_a_control_character_is_refused(name: str) -> None:
    # Beats log their schedules by name, and operators add them through the admin API.
    with pytest.raises(ConfigError, match="schedule name must be printable text"):
        Schedule(name, "t", every=5)
    assert Schedule("night ly/ä", "t", every=5).name == "night ly/ä"


def test_schedule_round_trips_through_its_stored_form() -> None:
    original = Schedule(
        "s",
        "t",
        cron="0 9 * * *",
        args=(1, "a"),
        kwargs={"k": [1]},
        queue="q",
        priority=3,
        timezone="Europe/Berlin",
        missed="skip",
    )
    assert Schedule.from_dict(original.to_dict()) == original


def test_missing_croniter_names_the_pip_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "croniter", None)
    compile_cron.cache_clear()
    try:
        with pytest.raises(ConfigError, match=r"pip install 'taskflow-queue\[cron\]'"):
            Schedule("s", "t", cron="*/7 * * * *")
        Schedule("s", "t", every=5)  # intervals need no croniter
    finally:
        compile_cron.cache_clear()


# -- each cron field is checked (croniter alone would accept these) -----------------------
@pytest.mark.parametrize(
    ("expr", "message"),
    [
        ("*/61 * * * *", "minute field '*/61': step must be 1..59"),
        ("*/0 * * * *", "minute field '*/0': step must be 1..59"),
        ("5-1 * * * *", "minute field '5-1': range '5-1' runs backwards"),
        ("*/90 * * * * *", "second field '*/90': step must be 1..59"),
        ("60 * * * * *", "second field '60': 60 is out of range 0..59"),
        ("0 24 * * *", "hour field '24': 24 is out of range 0..23"),
        ("0 */24 * * *", "hour field '*/24': step must be 1..23"),
        ("0 0 0 * *", "day field '0': 0 is out of range 1..31"),
        ("0 0 * 13 *", "month field '13': 13 is out of range 1..12"),
        ("0 0 * DEC-JAN *", "month field 'DEC-JAN': range 'DEC-JAN' runs backwards"),
        ("0 0 * * 8", "weekday field '8': 8 is out of range 0..7"),
        ("0 0 * * 1#6", "weekday field '1#6': '#6' must be #1..#5"),
        ("0 0 * * */7", "weekday field '*/7': step must be 1..6"),
        ("1,,2 * * * *", "minute field '1,,2': empty item"),
        ("? * * * *", "minute field '?': '?' is for the day and weekday fields only"),
        ("H * * * *", "minute field 'H': 'H' is not a number"),
        ("-5 * * * *", "minute field '-5'"),
    ],
)
def test_an_invalid_cron_field_is_refused_naming_the_field(expr: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Schedule("nightly", "t", cron=expr)
    assert message in str(caught.value)
    assert "'nightly'" in str(caught.value)


@pytest.mark.parametrize(
    "expr",
    [
        "*/59 * * * *",
        "0-59/15 * * * *",
        "5/15 * * * *",
        "0 */23 * * *",
        "0 9 * JAN-MAR MON-FRI",
        "0 9 * * 7",
        "0 9 * * 0-7",
        "0 9 L * *",
        "0 9 15W * *",
        "0 9 ? * 1#2",
        "0 9 * * L5",
        "*/30 0 9 * * *",
        "@weekly",
    ],
)
def test_valid_cron_expressions_are_accepted(expr: str) -> None:
    assert Schedule("s", "t", cron=expr).cron == expr


def test_periodic_and_add_periodic_refuse_an_invalid_cron_at_declaration() -> None:
    with App("cron-check") as app:
        with pytest.raises(ConfigError, match=r"minute field '\*/61'"):

            @app.periodic(cron="*/61 * * * *")
            def tick() -> None: ...

        @app.task
        def report() -> None: ...

        with pytest.raises(ConfigError, match=r"second field '\*/90'"):
            app.add_periodic(report, cron="*/90 * * * * *", name="fast")
