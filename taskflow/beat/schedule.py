"""Schedules and the pure computation of their fire times.

A :class:`Schedule` is data: a name, a task, a trigger (``cron`` or ``every``) and the call
options of each run. :class:`ScheduleSpec` declares, once, the options a caller gives for
one (``@app.periodic``, ``app.add_periodic``, ``taskflow schedules add``), and
:meth:`Schedule.build` turns them into a schedule. :func:`next_fire` and
:func:`latest_fire` are pure functions of a schedule and an instant (epoch seconds);
nothing here reads a clock or does I/O, so every edge case (DST, 6-field cron, intervals)
is testable without waiting.

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

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypedDict

from ..errors import ConfigError
from ..options import MAX_DELAY, call_arguments, check_priority, check_queue
from .cron import MAX_STEPS, compile_cron, cron_next, zone

__all__ = [
    "MISSED_POLICIES",
    "SCHEDULE_OPTIONS",
    "Schedule",
    "ScheduleSpec",
    "check_schedule_options",
    "fire_key",
    "latest_fire",
    "next_fire",
]

MISSED_POLICIES = ("once", "skip")
# How far latest_fire looks back before it gives up (a yearly cron is found well within).
_MAX_LOOKBACK = 800 * 86400.0


class ScheduleSpec(TypedDict, total=False):
    """A schedule's options as callers give them, before it is bound to a task.

    The keywords of ``@app.periodic`` and ``app.add_periodic`` and the options of
    ``taskflow schedules add`` are these. Left out (or None): ``name`` is the task's name,
    ``timezone`` is UTC, ``queue`` and ``priority`` are the task's; ``missed`` is
    ``"once"``. Give exactly one of ``cron`` and ``every`` (seconds or a timedelta).
    """

    cron: str | None
    every: float | timedelta | None
    name: str | None
    args: Sequence[Any]
    kwargs: Mapping[str, Any] | None
    queue: str | None
    priority: int | None
    timezone: str | None
    missed: str


SCHEDULE_OPTIONS = frozenset(ScheduleSpec.__optional_keys__)
"""The option names a schedule accepts (the keys of :class:`ScheduleSpec`)."""


def check_schedule_options(where: str, options: Mapping[str, Any]) -> None:
    """Refuse a keyword that is not a schedule option, as a misspelt keyword argument is."""
    unknown = sorted(set(options) - SCHEDULE_OPTIONS)
    if unknown:
        raise TypeError(f"{where}() got an unexpected keyword argument {unknown[0]!r}")


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
    args: Sequence[Any] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    queue: str | None = None
    priority: int | None = None
    timezone: str = "UTC"
    missed: str = "once"

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise ConfigError(f"a schedule name must be a non-empty string, got {self.name!r}")
        if not self.name.isprintable():
            # Beats log their schedules by name: a newline would forge a log line.
            raise ConfigError(f"a schedule name must be printable text, got {self.name!r}")
        try:
            self._check()
            args, kwargs = call_arguments(self.args, self.kwargs, self.task)
        except ConfigError as exc:
            raise ConfigError(f"schedule {self.name!r}: {exc}") from None
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"schedule {self.name!r}: {exc}") from None
        object.__setattr__(self, "args", args)
        object.__setattr__(self, "kwargs", kwargs)

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
        if every > MAX_DELAY:
            # As for a countdown: further is a mistake, and past the year 9999 no date
            # can show its next run.
            raise ValueError(f"every must be at most 100 years, got {every:g}s")
        if self.timezone != "UTC":
            raise ValueError("timezone applies to cron schedules only")
        object.__setattr__(self, "every", float(every))

    def _check_cron(self) -> None:
        if not isinstance(self.cron, str):
            raise ValueError(f"cron must be a string, got {self.cron!r}")
        if not isinstance(self.timezone, str):
            raise ValueError(f"timezone must be an IANA name, got {self.timezone!r}")
        zone(self.timezone)
        try:
            compile_cron(self.cron)
            # An expression that can never match (Feb 30) only shows when it is walked.
            next_fire(self, datetime(2000, 1, 1, tzinfo=UTC).timestamp())
        except ConfigError:
            raise
        except Exception as exc:
            raise ValueError(f"invalid cron expression {self.cron!r}: {exc}") from None

    @classmethod
    def build(cls, task: str, spec: ScheduleSpec) -> Schedule:
        """The schedule ``spec`` describes for the task named ``task`` (validated)."""
        name, every = spec.get("name"), spec.get("every")
        return cls(
            name=task if name is None else name,
            task=task,
            cron=spec.get("cron"),
            every=every.total_seconds() if isinstance(every, timedelta) else every,
            args=spec.get("args", ()),
            kwargs=spec.get("kwargs") or {},
            queue=spec.get("queue"),
            priority=spec.get("priority"),
            timezone=spec.get("timezone") or "UTC",
            missed=spec.get("missed", "once"),
        )

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
            args=data.get("args") or (),
            kwargs=data.get("kwargs") or {},
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
    return cron_next(compile_cron(schedule.cron), zone(schedule.timezone), t)


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
            for _ in range(MAX_STEPS):
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
