"""The worker engine."""

from .events import EventBus, Subscription
from .worker import Worker

__all__ = ["EventBus", "Subscription", "Worker"]
