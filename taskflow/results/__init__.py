"""Result stores: ``MemoryResultStore`` (built in), ``RedisResultStore``, ``NatsResultStore``.

The schemes and their classes are listed once, in :data:`taskflow.urls.SCHEMES`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..clock import Clock
from ..urls import backend_from_url, scheme_class
from .base import ResultStore, StoreCapabilities, TaskInfo

if TYPE_CHECKING:
    from .memory import MemoryResultStore

__all__ = [
    "MemoryResultStore",
    "ResultStore",
    "StoreCapabilities",
    "TaskInfo",
    "results_from_url",
]

_LAZY = {"MemoryResultStore": "memory", "RedisResultStore": "redis", "NatsResultStore": "nats"}


def results_from_url(
    url: str, *, clock: Clock | None = None, label: str | None = None
) -> ResultStore:
    """Build a result store from a URL; ``ConfigError`` for anything the URL gets wrong.

    ``label`` names where the URL came from in errors (default ``"results URL"``).
    """
    store: ResultStore = backend_from_url(url, "results", clock=clock, label=label)
    return store


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return scheme_class(_LAZY[name], "results")
    raise AttributeError(name)
