"""Brokers: ``MemoryBroker`` (built in), ``RedisBroker``, ``NatsBroker``, ``KombuBroker``.

Backends that need a client library are imported lazily, so ``import taskflow`` never
imports redis, nats or kombu.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..clock import Clock
from ..errors import ConfigError
from ..urls import load_backend, option_float, parse_url, reject_unknown
from .base import Broker, BrokerAdmin, Capabilities, DeadLetter, Delivery, Message
from .memory import MemoryBroker

if TYPE_CHECKING:
    from .nats import NatsBroker
    from .redis import RedisBroker

__all__ = [
    "Broker",
    "BrokerAdmin",
    "Capabilities",
    "DeadLetter",
    "Delivery",
    "MemoryBroker",
    "Message",
    "NatsBroker",
    "RedisBroker",
    "broker_from_url",
]

# scheme -> (module:class, pip extra)
SCHEMES: dict[str, tuple[str, str | None]] = {
    "redis": ("taskflow.brokers.redis:RedisBroker", "redis"),
    "rediss": ("taskflow.brokers.redis:RedisBroker", "redis"),
    "nats": ("taskflow.brokers.nats:NatsBroker", "nats"),
    "amqp": ("taskflow.brokers.kombu:KombuBroker", "kombu"),
    "amqps": ("taskflow.brokers.kombu:KombuBroker", "kombu"),
}

_LAZY = {"RedisBroker": "redis", "NatsBroker": "nats", "KombuBroker": "amqp"}


def broker_from_url(url: str, *, clock: Clock | None = None) -> Broker:
    """Build a broker from a URL; ``ConfigError`` for unknown schemes or bad options."""
    parsed = parse_url(url, "broker")
    if parsed.scheme == "memory":
        reject_unknown(parsed, {"lease"})
        return MemoryBroker(lease=option_float(parsed, "lease", 30.0), clock=clock)
    entry = SCHEMES.get(parsed.scheme)
    if entry is None:
        known = ", ".join(["memory", *sorted(SCHEMES)])
        raise ConfigError(
            f"unknown broker scheme {parsed.scheme!r} in {parsed.masked!r}; known: {known}"
        )
    cls = load_backend(entry[0], entry[1], parsed)
    broker: Broker = cls.from_url(url)
    return broker


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        target, extra = SCHEMES[_LAZY[name]]
        return load_backend(target, extra, parse_url(f"{_LAZY[name]}://", "broker"))
    raise AttributeError(name)
