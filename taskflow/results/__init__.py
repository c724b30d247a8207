"""Result stores: ``MemoryResultStore`` (built in), ``RedisResultStore``, ``NatsResultStore``.

The schemes and their classes are listed once, in :data:`taskflow.urls.SCHEMES`.
"""

from __future__ import annotations

from typing import Any

from ..clock import Clock
from ..urls import SCHEMES, backend_class, load_backend, option_int, parse_url
from .base import ResultStore, StoreCapabilities, TaskInfo
from .memory import MemoryResultStore

__all__ = [
    "MemoryResultStore",
    "ResultStore",
    "StoreCapabilities",
    "TaskInfo",
    "results_from_url",
]

_LAZY = {"RedisResultStore": "redis", "NatsResultStore": "nats"}


def results_from_url(
    url: str, *, clock: Clock | None = None, label: str | None = None
) -> ResultStore:
    """Build a result store from a URL; ``ConfigError`` for anything the URL gets wrong.

    ``label`` names where the URL came from in errors (default ``"results URL"``).
    """
    parsed = parse_url(url, "results", label=label)
    cls = backend_class(parsed, "results")
    if cls is MemoryResultStore:
        return MemoryResultStore(max_entries=option_int(parsed, "max_entries", None), clock=clock)
    store: ResultStore = cls.from_url(url)
    return store


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        entry = SCHEMES[_LAZY[name]]
        return load_backend(entry.results, entry.extra, parse_url(f"{_LAZY[name]}://", "results"))
    raise AttributeError(name)
