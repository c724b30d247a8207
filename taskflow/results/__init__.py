"""Result stores: ``MemoryResultStore`` (built in), ``RedisResultStore``, ``NatsResultStore``."""

from __future__ import annotations

from typing import Any

from ..clock import Clock
from ..errors import ConfigError
from ..urls import load_backend, option_int, parse_url, reject_unknown
from .base import ResultStore, StoreCapabilities, TaskInfo
from .memory import MemoryResultStore

__all__ = [
    "MemoryResultStore",
    "ResultStore",
    "StoreCapabilities",
    "TaskInfo",
    "results_from_url",
]

SCHEMES: dict[str, tuple[str, str | None]] = {
    "redis": ("taskflow.results.redis:RedisResultStore", "redis"),
    "rediss": ("taskflow.results.redis:RedisResultStore", "redis"),
    "nats": ("taskflow.results.nats:NatsResultStore", "nats"),
}

_LAZY = {"RedisResultStore": "redis", "NatsResultStore": "nats"}


def results_from_url(url: str, *, clock: Clock | None = None) -> ResultStore:
    """Build a result store from a URL."""
    parsed = parse_url(url, "results")
    if parsed.scheme == "memory":
        reject_unknown(parsed, {"max_entries"})
        return MemoryResultStore(max_entries=option_int(parsed, "max_entries", None), clock=clock)
    entry = SCHEMES.get(parsed.scheme)
    if entry is None:
        known = ", ".join(["memory", *sorted(SCHEMES)])
        raise ConfigError(
            f"unknown results scheme {parsed.scheme!r} in {parsed.masked!r}; known: {known}"
        )
    cls = load_backend(entry[0], entry[1], parsed)
    store: ResultStore = cls.from_url(url)
    return store


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        target, extra = SCHEMES[_LAZY[name]]
        return load_backend(target, extra, parse_url(f"{_LAZY[name]}://", "results"))
    raise AttributeError(name)
