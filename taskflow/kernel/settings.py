"""An app's settings, checked once, and the backends they name.

:class:`Settings` is what ``App(...)`` was given besides its backends, validated and
frozen: every engine reads it, none changes it. A backend is given as an object, a URL, or
neither: then ``TASKFLOW_BROKER_URL`` / ``TASKFLOW_RESULTS_URL``, else ``memory://``.
Without a result store of its own, an app keeps results where its broker lives when that
broker can hold them (Redis, NATS), and in memory otherwise.

Secrets stay out of those URLs: a backend built from one reads its password or token from
``password_file``/``token_file`` or else from ``TASKFLOW_BROKER_PASSWORD``,
``TASKFLOW_BROKER_TOKEN``, ``TASKFLOW_RESULTS_PASSWORD`` and ``TASKFLOW_RESULTS_TOKEN``
(:mod:`taskflow._tls`, when the backend is built; ``docs/security.md``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from ..brokers.base import Broker
from ..clock import SYSTEM_CLOCK, Clock
from ..errors import ConfigError
from ..options import check_name, check_queue, check_timeout
from ..results.base import ResultStore
from ..urls import backend_from_url

__all__ = ["Settings", "make_broker", "make_results"]

log = logging.getLogger("taskflow.app")


def _none() -> Mapping[str, int]:
    return MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Settings:
    """What an app was configured with (see ``App``); built by :meth:`build`."""

    name: str = "taskflow"
    clock: Clock = SYSTEM_CLOCK
    default_queue: str = "default"
    queue_weights: Mapping[str, int] = field(default_factory=_none)
    default_timeout: float | None = 300.0
    default_retries: int = 0
    result_ttl: float | None = 86400.0
    max_queued: int | None = None
    max_deliveries: int = 5
    """Deliveries of one attempt a broker makes before a task whose workers keep dying is
    dead-lettered ``worker_lost`` (lost deliveries do not spend retries)."""
    queue_limits: Mapping[str, int] = field(default_factory=_none)
    audit_retention: float = 30 * 86400.0
    """Seconds an admin audit entry is kept (``app.admin.audit()``)."""

    @classmethod
    def build(
        cls,
        name: str,
        *,
        clock: Clock | None = None,
        default_queue: str = "default",
        queue_weights: Mapping[str, int] | None = None,
        default_timeout: float | None = 300.0,
        default_retries: int = 0,
        result_ttl: float | None = 86400.0,
        max_queued: int | None = None,
        max_deliveries: int = 5,
        queue_limits: Mapping[str, int] | None = None,
        audit_retention: float = 30 * 86400.0,
    ) -> Settings:
        """Check every setting; a bad one raises ``ConfigError`` naming the app."""
        # It names the app's log lines, its beat's schedules and its cluster-wide limits.
        check_name(name, "an app name")
        where = f"App({name!r})"
        if clock is not None and not isinstance(clock, Clock):
            raise ConfigError(
                f"{where}: clock must be a taskflow Clock, got {type(clock).__name__}"
            )
        for option, value in (("queue_weights", queue_weights), ("queue_limits", queue_limits)):
            if value is not None and not isinstance(value, Mapping):
                raise ConfigError(
                    f"{where}: {option} must map queue names to numbers, got {type(value).__name__}"
                )
        try:
            # These checks are shared with tasks' options, which raise ValueError.
            queue = check_queue(default_queue, where)
            timeout = check_timeout(default_timeout, where, "default_timeout")
            ttl = check_timeout(result_ttl, where, "result_ttl")
            retention = check_timeout(audit_retention, where, "audit_retention")
            weights = _check_weights(queue_weights, name)
        except ConfigError:
            raise
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        retries = _check_retries(default_retries, name)
        most = _check_limit(max_queued, name, "max_queued")
        deliveries = _check_max_deliveries(max_deliveries, name)
        limits = {
            q: _check_limit(n, name, f"queue_limits[{q!r}]") or 0
            for q, n in (queue_limits or {}).items()
        }
        return cls(
            name=name,
            clock=clock or SYSTEM_CLOCK,
            default_queue=queue,
            queue_weights=MappingProxyType(weights),
            default_timeout=timeout,
            default_retries=retries,
            result_ttl=ttl,
            max_queued=most,
            max_deliveries=deliveries,
            queue_limits=MappingProxyType(limits),
            audit_retention=retention or 30 * 86400.0,
        )

    def queue_limit(self, queue: str) -> int | None:
        """How many messages ``queue`` may hold (None: unbounded)."""
        return self.queue_limits.get(queue, self.max_queued)


def make_broker(app: str, broker: str | Broker | None, clock: Clock) -> Broker:
    """The broker of ``App(app, broker=...)``."""
    if isinstance(broker, Broker):
        return broker
    url, label = _given_url(app, broker, "broker", "TASKFLOW_BROKER_URL")
    if not isinstance(url or "", str):
        raise ConfigError(f"App({app!r}): broker must be a URL or a Broker")
    # From the URL table itself, not through taskflow.brokers: that package names the
    # client-library brokers for type checkers, and the kernel imports no client library.
    built: Broker = backend_from_url(url or "memory://", "broker", clock=clock, label=label)
    return built


def make_results(
    app: str, results: str | ResultStore | None, broker: Broker, clock: Clock
) -> ResultStore:
    """The result store of ``App(app, results=...)`` next to its (built) ``broker``."""
    if isinstance(results, ResultStore):
        return results
    url, label = _given_url(app, results, "results", "TASKFLOW_RESULTS_URL")
    if not url:
        url, label = _derived_results_url(broker), f"App({app!r}): broker URL"
    if not isinstance(url, str):
        raise ConfigError(f"App({app!r}): results must be a URL or a ResultStore")
    built: ResultStore = backend_from_url(url, "results", clock=clock, label=label)
    return built


def _given_url(app: str, given: str | None, what: str, env: str) -> tuple[str | None, str]:
    """The URL ``App(app, what=...)`` was given, else the one in ``env``; with the label
    its errors name."""
    if not given and os.environ.get(env):
        return os.environ[env], f"App({app!r}): {env}"
    return given, f"App({app!r}): {what} URL"


def _derived_results_url(broker: Broker) -> str:
    # Schemes are case-insensitive: REDIS:// keeps its results in Redis too.
    scheme = broker.url.split("://", 1)[0].lower()
    if scheme in ("redis", "rediss", "nats", "tls", "sqlite", "amqp", "amqps"):
        return broker.url
    if scheme != "memory":
        log.warning("no result store configured for %s; keeping results in memory", scheme)
    return "memory://"


def _check_retries(value: Any, app: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"App({app!r}): default_retries must be a non-negative integer")
    return value


def _check_max_deliveries(value: Any, app: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"App({app!r}): max_deliveries must be an integer >= 1, got {value!r}")
    return value


def _check_weights(weights: Mapping[str, int] | None, app: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for queue, weight in (weights or {}).items():
        if isinstance(weight, bool) or not isinstance(weight, int) or weight < 1:
            raise ConfigError(f"App({app!r}): queue_weights[{queue!r}] must be an integer >= 1")
        out[check_queue(queue, f"App({app!r})")] = weight
    return out


def _check_limit(value: Any, app: str, option: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"App({app!r}): {option} must be a positive integer, got {value!r}")
    return int(value)
