"""Schedules and the pure computation of their fire times.

A :class:`Schedule` is data: a name, a task, a trigger (``cron`` or ``every``) and the call
options of each run. :func:`next_fire` and :func:`latest_fire` are pure functions of a
schedule and an instant (epoch seconds); nothing here reads a clock or does I/O, so every
edge case (DST, 6-field cron, intervals) is testable without waiting.

Time zones (cron only). A cron expression is matched against the wall clock of
``timezone`` (an IANA name, default ``"UTC"``):

* spring forward: a run whose wall time falls into the skipped hour fires once, at the
  first instant after the gap (``30 2 * * *`` fires at 03:00 on that day);
* fall back: a run whose wall time occurs twice fires once, at the first occurrence --
  unless the hour field is a wildcard (``*`` or ``*/n``), in which case the repeated
  hour runs again, so ``*/15 * * * *`` keeps its real 15-minute cadence.

Intervals (``every``) are elapsed time, anchored at the Unix epoch: ``every=60`` fires at
each whole UTC minute, whichever process computes it. That makes the fire times -- and so
the task ids derived from them -- the same in every beat process.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from ..errors import ConfigError
from ..options import check_priority, check_queue

__all__ = [
    "MISSED_POLICIES",
    "Schedule",
    "fire_key",
    "latest_fire",
    "load_croniter",
    "next_fire",
]

MISSED_POLICIES = ("once", "skip")
CRON_HINT = "pip install 'taskflow-queue[cron]'"
_ALIASES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
# A guard against a walk that never ends; a real walk takes at most a few thousand steps
# (a seconds-level cron across a one-hour DST shift).
_MAX_STEPS = 200_000
# How far latest_fire looks back before it gives up (a yearly cron is found well within).
_MAX_LOOKBACK = 800 * 86400.0


def load_croniter() -> Any:
    """The ``croniter`` class; a missing extra is a ConfigError with the pip command."""
    try:
        from croniter import croniter
    except ImportError:
        raise ConfigError(f"cron schedules need croniter: {CRON_HINT}") from None
    return croniter


@dataclass(frozen=True, slots=True)
class _Cron:
    expr: str
    seconds: bool  # six fields, seconds first
    hour_wildcard: bool  # the repeated hour of a fall-back runs again


# -- checking each field ------------------------------------------------------------------
# croniter is lenient (``*/61`` runs hourly, ``5-1`` wraps, ``*/90`` seconds runs every
# minute): every field is checked here first, so a schedule means what it says.
_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")


@dataclass(frozen=True, slots=True)
class _Field:
    name: str
    low: int
    high: int
    names: tuple[str, ...] = ()  # names for low, low + 1, ...

    def value(self, text: str) -> int:
        lowered = text.lower()
        if lowered in self.names:
            return self.low + self.names.index(lowered)
        if not text.isdigit():
            raise ValueError(f"{text!r} is not a number")
        number = int(text)
        if not self.low <= number <= self.high:
            raise ValueError(f"{number} is out of range {self.low}..{self.high}")
        return number


_SECOND = _Field("second", 0, 59)
_FIELDS = (
    _Field("minute", 0, 59),
    _Field("hour", 0, 23),
    _Field("day", 1, 31),
    _Field("month", 1, 12, _MONTHS),
    _Field("weekday", 0, 7, _DAYS),  # 0 and 7 are Sunday
)


def _check_item(item: str, spec: _Field) -> None:
    """One comma-separated item of a field; ValueError says what is wrong."""
    upper = item.upper()
    if spec.name == "day" and (upper == "L" or (item[:-1].isdigit() and upper[-1:] == "W")):
        if upper != "L":
            spec.value(item[:-1])  # nW: the weekday nearest to day n
        return
    if spec.name == "weekday" and ("#" in item or upper[:1] == "L"):
        day, _, nth = item.partition("#")
        spec.value(day[1:] if upper[:1] == "L" else day)  # Ln: the last n-day of the month
        if "#" in item and not (nth.isdigit() and 1 <= int(nth) <= 5):
            raise ValueError(f"'#{nth}' must be #1..#5 (the nth weekday of the month)")
        return
    base, slash, step = item.partition("/")
    span = spec.high - spec.low - (1 if spec.name == "weekday" else 0)
    if slash and not (step.isdigit() and 1 <= int(step) <= span):
        raise ValueError(f"step must be 1..{span}")
    if base in ("*", "?"):
        if base == "?" and spec.name not in ("day", "weekday"):
            raise ValueError("'?' is for the day and weekday fields only")
        return
    first, dash, last = base.partition("-")
    low = spec.value(first)
    if dash and low > spec.value(last):
        raise ValueError(f"range {base!r} runs backwards: write the smaller bound first")


def _check_fields(fields: Sequence[str]) -> None:
    specs = (_SECOND, *_FIELDS) if len(fields) == 6 else _FIELDS
    for text, spec in zip(fields, specs, strict=True):
        for item in text.split(","):
            try:
                if not item:
                    raise ValueError("empty item")
                _check_item(item, spec)
            except ValueError as exc:
                raise ValueError(f"{spec.name} field {text!r}: {exc}") from None


@functools.lru_cache(maxsize=512)
def _compile(expr: str) -> _Cron:
    """Parse and check a cron expression; ValueError says what is wrong."""
    text = _ALIASES.get(expr.strip().lower(), expr)
    fields = text.split()
    if len(fields) not in (5, 6):
        raise ValueError(
            f"expected 5 fields (minute hour day month weekday) or 6 with seconds first, "
            f"got {len(fields)}"
        )
    _check_fields(fields)
    seconds = len(fields) == 6
    croniter = load_croniter()
    normalized = " ".join(fields)
    try:
        croniter(normalized, datetime(2000, 1, 1), second_at_beginning=seconds)
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(str(exc) or type(exc).__name__) from None
    return _Cron(normalized, seconds, fields[2 if seconds else 1].startswith("*"))


@functools.lru_cache(maxsize=64)
def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        raise ValueError(f"unknown time zone {name!r}") from None


@dataclass(frozen=True, slots=True)
class Schedule:
    """A periodic run of ``task``: every ``every`` seconds or on a ``cron`` expression.

    Construction validates everything (an invalid schedule never exists), raising
    :class:`~taskflow.errors.ConfigError` (a ``ValueError``) that names the schedule.
    ``missed``: after downtime, ``"once"`` fires the most recent missed run once,
    ``"skip"`` fires nothing until the next run is due.
    """

    name: str
    task: str
    cron: str | None = None
    every: float | None = None
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    queue: str | None = None
    priority: int | None = None
    timezone: str = "UTC"
    missed: str = "once"

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise ConfigError(f"a schedule name must be a non-empty string, got {self.name!r}")
        try:
            self._check()
        except ConfigError as exc:
            raise ConfigError(f"schedule {self.name!r}: {exc}") from None
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"schedule {self.name!r}: {exc}") from None
        object.__setattr__(self, "args", tuple(self.args))
        object.__setattr__(self, "kwargs", dict(self.kwargs))

    def _check(self) -> None:
        if not isinstance(self.task, str) or not self.task:
            raise ValueError(f"task must be a task name, got {self.task!r}")
        if (self.cron is None) == (self.every is None):
            raise ValueError("give exactly one of cron= or every=")
        if self.cron is not None:
            self._check_cron()
        else:
            self._check_every()
        if self.missed not in MISSED_POLICIES:
            raise ValueError(f"missed must be 'once' or 'skip', got {self.missed!r}")
        if not isinstance(self.args, Sequence) or isinstance(self.args, str | bytes):
            raise ValueError(f"args must be a list or tuple, got {self.args!r}")
        if not isinstance(self.kwargs, Mapping):
            raise ValueError(f"kwargs must be a mapping, got {self.kwargs!r}")
        if self.queue is not None:
            check_queue(self.queue, "queue")
        if self.priority is not None:
            check_priority(self.priority, "priority")

    def _check_every(self) -> None:
        every: Any = self.every
        if isinstance(every, timedelta):
            every = every.total_seconds()
        if (
            isinstance(every, bool)
            or not isinstance(every, int | float)
            or not math.isfinite(every)
            or round(every * 1000) < 1
        ):
            raise ValueError(
                f"every must be a positive number of seconds (at least "
                f"0.001) or a timedelta, got {self.every!r}"
            )
        if self.timezone != "UTC":
            raise ValueError("timezone applies to cron schedules only")
        object.__setattr__(self, "every", float(every))

    def _check_cron(self) -> None:
        if not isinstance(self.cron, str):
            raise ValueError(f"cron must be a string, got {self.cron!r}")
        if not isinstance(self.timezone, str):
            raise ValueError(f"timezone must be an IANA name, got {self.timezone!r}")
        _zone(self.timezone)
        try:
            _compile(self.cron)
            # An expression that can never match (Feb 30) only shows when it is walked.
            next_fire(self, datetime(2000, 1, 1, tzinfo=UTC).timestamp())
        except ConfigError:
            raise
        except Exception as exc:
            raise ValueError(f"invalid cron expression {self.cron!r}: {exc}") from None

    @property
    def trigger(self) -> str:
        """A short description: ``cron '*/5 * * * *' Europe/Berlin`` or ``every 30s``."""
        if self.cron is not None:
            zone = "" if self.timezone == "UTC" else f" {self.timezone}"
            return f"cron {self.cron!r}{zone}"
        return f"every {self.every:g}s"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe form (what the backend stores)."""
        return {
            "name": self.name,
            "task": self.task,
            "cron": self.cron,
            "every": self.every,
            "args": list(self.args),
            "kwargs": dict(self.kwargs),
            "queue": self.queue,
            "priority": self.priority,
            "timezone": self.timezone,
            "missed": self.missed,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Schedule:
        """Rebuild (and re-validate) a schedule from :meth:`to_dict` output."""
        return cls(
            name=data["name"],
            task=data["task"],
            cron=data.get("cron"),
            every=data.get("every"),
            args=tuple(data.get("args") or ()),
            kwargs=dict(data.get("kwargs") or {}),
            queue=data.get("queue"),
            priority=data.get("priority"),
            timezone=data.get("timezone") or "UTC",
            missed=data.get("missed") or "once",
        )


def _epoch(after: float | datetime) -> float:
    if isinstance(after, datetime):
        if after.tzinfo is None or after.utcoffset() is None:
            raise ValueError("a datetime given to next_fire must be timezone-aware")
        return after.timestamp()
    return float(after)


def next_fire(schedule: Schedule, after: float | datetime) -> float:
    """The first fire time of ``schedule`` strictly after ``after`` (epoch seconds).

    Pure: the same inputs always give the same answer, in any process.
    """
    t = _epoch(after)
    if schedule.every is not None:
        step = round(schedule.every * 1000)
        return (math.floor(t * 1000) // step + 1) * step / 1000
    assert schedule.cron is not None
    return _cron_next(_compile(schedule.cron), _zone(schedule.timezone), t)


def latest_fire(schedule: Schedule, at: float | datetime) -> float | None:
    """The last fire time of ``schedule`` at or before ``at`` (None if none for years)."""
    t = _epoch(at)
    if schedule.every is not None:
        step = round(schedule.every * 1000)
        return math.floor(t * 1000) // step * step / 1000
    # Look back 1 s, 2 s, 4 s, ... for a fire time, then walk forward to the last one.
    back = 1.0
    while back <= _MAX_LOOKBACK:
        fire = next_fire(schedule, t - back)
        if fire <= t:
            for _ in range(_MAX_STEPS):
                following = next_fire(schedule, fire)
                if following > t:
                    return fire
                fire = following
            return fire
        back *= 2
    return None


def fire_key(name: str, fire_ts: float) -> str:
    """The idempotency key (and task id) of one run: ``beat:<name>:<fire_ts>``."""
    if fire_ts == int(fire_ts):
        text = str(int(fire_ts))
    else:
        text = f"{fire_ts:.3f}".rstrip("0").rstrip(".")
    return f"beat:{name}:{text}"


# -- cron on a wall clock --------------------------------------------------------------
def _cron_next(cron: _Cron, tz: ZoneInfo, after: float) -> float:
    """Walk wall-clock candidates in order and map each to its instant(s).

    Instants of successive candidates never decrease, except for the second occurrence of
    a repeated (fall-back) hour; so the walk starts early enough to see those and stops
    once a candidate's first instant cannot beat the best found.
    """
    start = math.floor(after)
    local = datetime.fromtimestamp(start, tz)
    wall = local.replace(tzinfo=None, fold=0)
    back = _repeat_shift(wall, tz) if cron.hour_wildcard and local.fold == 0 else timedelta()
    walker = load_croniter()(cron.expr, wall - back, second_at_beginning=cron.seconds)
    best = math.inf
    for _ in range(_MAX_STEPS):
        candidate: datetime = walker.get_next(datetime)
        first, second = _instants(candidate, tz, cron.hour_wildcard)
        if first >= best:
            return best
        for instant in (first, second):
            if instant is not None and after < instant < best:
                best = instant
    raise RuntimeError(f"cron {cron.expr!r}: no fire time found after {after}")


def _repeat_shift(wall: datetime, tz: ZoneInfo) -> timedelta:
    """How much earlier the second occurrence of ``wall``'s hour starts (0 if none)."""
    first = wall.replace(tzinfo=tz, fold=0).utcoffset()
    second = wall.replace(tzinfo=tz, fold=1).utcoffset()
    if first is None or second is None or first <= second:
        return timedelta()
    return first - second


def _instants(wall: datetime, tz: ZoneInfo, both: bool) -> tuple[float, float | None]:
    """The instant(s) a wall time denotes: one; the end of a gap; or one or two of a fold."""
    early = wall.replace(tzinfo=tz, fold=0).timestamp()
    late = wall.replace(tzinfo=tz, fold=1).timestamp()
    if early == late:
        return early, None
    if early < late:  # ambiguous: the hour is repeated
        return early, (late if both else None)
    return _gap_end(late, early, tz), None


def _gap_end(low: float, high: float, tz: ZoneInfo) -> float:
    """The first instant at or after the offset change that lies in ``(low, high]``."""
    before = datetime.fromtimestamp(low, tz).utcoffset()
    lo, hi = math.floor(low), math.ceil(high)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if datetime.fromtimestamp(mid, tz).utcoffset() == before:
            lo = mid
        else:
            hi = mid
    return float(hi)
