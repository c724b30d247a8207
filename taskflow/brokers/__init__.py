"""Brokers: ``MemoryBroker`` (built in), ``RedisBroker``, ``NatsBroker`` and ``KombuBroker``.

Each is imported when first used, so ``import taskflow`` never imports redis or nats, and
a worker on one backend loads no other. The schemes and their classes are listed once, in
:data:`taskflow.urls.SCHEMES`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..clock import Clock
from ..urls import backend_from_url, scheme_class
from .base import Broker, BrokerAdmin, Capabilities, DeadLetter, Delivery, Message

if TYPE_CHECKING:
    from .kombu import KombuBroker
    from .memory import MemoryBroker
    from .nats import NatsBroker
    from .redis import RedisBroker

__all__ = [
    "Broker",
    "BrokerAdmin",
    "Capabilities",
    "DeadLetter",
    "Delivery",
    "KombuBroker",
    "MemoryBroker",
    "Message",
    "NatsBroker",
    "RedisBroker",
    "broker_from_url",
]

_LAZY = {
    "MemoryBroker": "memory",
    "RedisBroker": "redis",
    "NatsBroker": "nats",
    "KombuBroker": "amqp",
}


def broker_from_url(url: str, *, clock: Clock | None = None, label: str | None = None) -> Broker:
    """Build a broker from a URL; ``ConfigError`` for anything the URL gets wrong.

    ``label`` names where the URL came from in errors (default ``"broker URL"``).
    """
    broker: Broker = backend_from_url(url, "broker", clock=clock, label=label)
    return broker


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return scheme_class(_LAZY[name], "broker")
    raise AttributeError(name)
