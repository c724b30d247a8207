"""The worker engine."""

from ..eventbus import EventBus, Subscription
from .worker import Worker

__all__ = ["EventBus", "Subscription", "Worker"]
