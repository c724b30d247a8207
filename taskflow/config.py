"""The App's settings: checks of its arguments and the backends they name.

A backend is given as an object, a URL, or neither: then ``TASKFLOW_BROKER_URL`` /
``TASKFLOW_RESULTS_URL``, else ``memory://``. Without a result store of its own, an app
keeps results where its broker lives when that broker can hold them (Redis, NATS), and in
memory otherwise.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

from .brokers import broker_from_url
from .brokers.base import Broker
from .clock import Clock
from .errors import ConfigError
from .options import check_queue
from .results import results_from_url
from .results.base import ResultStore

__all__ = [
    "check_limit",
    "check_max_deliveries",
    "check_retries",
    "check_weights",
    "make_broker",
    "make_results",
]

log = logging.getLogger("taskflow.app")


def make_broker(app: str, broker: str | Broker | None, clock: Clock) -> Broker:
    """The broker of ``App(app, broker=...)``."""
    if isinstance(broker, Broker):
        return broker
    label = f"App({app!r}): broker URL"
    url = broker
    if not url and os.environ.get("TASKFLOW_BROKER_URL"):
        url, label = os.environ["TASKFLOW_BROKER_URL"], f"App({app!r}): TASKFLOW_BROKER_URL"
    if not isinstance(url or "", str):
        raise ConfigError(f"App({app!r}): broker must be a URL or a Broker")
    return broker_from_url(url or "memory://", clock=clock, label=label)


def make_results(
    app: str, results: str | ResultStore | None, broker: Broker, clock: Clock
) -> ResultStore:
    """The result store of ``App(app, results=...)`` next to its (built) ``broker``."""
    if isinstance(results, ResultStore):
        return results
    label = f"App({app!r}): results URL"
    url = results
    if not url and os.environ.get("TASKFLOW_RESULTS_URL"):
        url, label = os.environ["TASKFLOW_RESULTS_URL"], f"App({app!r}): TASKFLOW_RESULTS_URL"
    if not url:
        url, label = _derived_results_url(broker), f"App({app!r}): broker URL"
    if not isinstance(url, str):
        raise ConfigError(f"App({app!r}): results must be a URL or a ResultStore")
    return results_from_url(url, clock=clock, label=label)


def _derived_results_url(broker: Broker) -> str:
    # Schemes are case-insensitive: REDIS:// keeps its results in Redis too.
    scheme = broker.url.split("://", 1)[0].lower()
    if scheme in ("redis", "rediss", "nats"):
        return broker.url
    if scheme != "memory":
        log.warning("no result store configured for %s; keeping results in memory", scheme)
    return "memory://"


def check_retries(value: Any, app: str) -> int:
    """``default_retries``: a non-negative integer."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"App({app!r}): default_retries must be a non-negative integer")
    return value


def check_max_deliveries(value: Any, app: str) -> int:
    """``max_deliveries``: how many deliveries of one attempt a broker makes (>= 1)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"App({app!r}): max_deliveries must be an integer >= 1, got {value!r}")
    return value


def check_weights(weights: Mapping[str, int] | None, app: str) -> dict[str, int]:
    """``queue_weights``: queue name -> an integer >= 1."""
    out: dict[str, int] = {}
    for queue, weight in (weights or {}).items():
        if isinstance(weight, bool) or not isinstance(weight, int) or weight < 1:
            raise ConfigError(f"App({app!r}): queue_weights[{queue!r}] must be an integer >= 1")
        out[check_queue(queue, f"App({app!r})")] = weight
    return out


def check_limit(value: Any, app: str, option: str) -> int | None:
    """A queue length limit: None (unbounded) or a positive integer."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"App({app!r}): {option} must be a positive integer, got {value!r}")
    return int(value)
