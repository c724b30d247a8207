"""Periodic tasks: schedules (a pure ``next_fire``) and the beat loop that enqueues them."""

from .beat import Beat, Firing
from .periodic import PeriodicDecorator, PeriodicRegistry, ScheduleInfo
from .schedule import Schedule, ScheduleSpec, fire_key, latest_fire, next_fire

__all__ = [
    "Beat",
    "Firing",
    "PeriodicDecorator",
    "PeriodicRegistry",
    "Schedule",
    "ScheduleInfo",
    "ScheduleSpec",
    "fire_key",
    "latest_fire",
    "next_fire",
]
