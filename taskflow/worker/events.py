"""Event fan-out for workers (see :mod:`taskflow.eventbus`)."""

from ..eventbus import EventBus, Subscription

__all__ = ["EventBus", "Subscription"]
