"""Cron expressions: strict checking, and the walk from an instant to the next fire time.

croniter does the calendar arithmetic, but it is lenient (``*/61`` runs hourly, ``5-1``
wraps, ``*/90`` seconds runs every minute), so every field is checked here first and a
schedule means what it says. :func:`cron_next` maps croniter's wall-clock candidates to
instants in a time zone, which is where the spring-forward gap and the fall-back fold are
handled (:mod:`.schedule` states the rules). croniter is an optional extra, imported on
first use by :func:`load_croniter`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from ..errors import ConfigError

__all__ = ["CRON_HINT", "MAX_STEPS", "Cron", "compile_cron", "cron_next", "load_croniter", "zone"]

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
MAX_STEPS = 200_000


def load_croniter() -> Any:
    """The ``croniter`` class; a missing extra is a ConfigError with the pip command."""
    try:
        from croniter import croniter
    except ImportError:
        raise ConfigError(f"cron schedules need croniter: {CRON_HINT}") from None
    return croniter


@dataclass(frozen=True, slots=True)
class Cron:
    """A checked cron expression, as :func:`cron_next` walks it."""

    expr: str
    seconds: bool  # six fields, seconds first
    hour_wildcard: bool  # the repeated hour of a fall-back runs again


# -- checking each field ------------------------------------------------------------------
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
def compile_cron(expr: str) -> Cron:
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
    return Cron(normalized, seconds, fields[2 if seconds else 1].startswith("*"))


@functools.lru_cache(maxsize=64)
def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        raise ValueError(f"unknown time zone {name!r}") from None


# -- cron on a wall clock --------------------------------------------------------------
def cron_next(cron: Cron, tz: ZoneInfo, after: float) -> float:
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
    for _ in range(MAX_STEPS):
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
