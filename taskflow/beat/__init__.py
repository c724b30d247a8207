"""Periodic tasks: schedules (a pure ``next_fire``) and the beat loop that enqueues them."""

from .beat import Beat, Firing
from .periodic import PeriodicRegistry, ScheduleInfo, periodic_of
from .schedule import Schedule, fire_key, latest_fire, next_fire

__all__ = [
    "Beat",
    "Firing",
    "PeriodicRegistry",
    "Schedule",
    "ScheduleInfo",
    "fire_key",
    "latest_fire",
    "next_fire",
    "periodic_of",
]
