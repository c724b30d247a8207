"""Task options, their validation, and precedence (app < task < call)."""

from __future__ import annotations

import difflib
import importlib.util
import inspect
import math
import re
import uuid
from collections.abc import Callable, Iterable, Mapping, Set
from dataclasses import dataclass, fields
from typing import Any

from .errors import ConfigError

__all__ = [
    "MAX_DELAY",
    "TASK_OPTION_NAMES",
    "RateLimit",
    "TaskOptions",
    "check_hook",
    "check_name",
    "check_priority",
    "check_queue",
    "check_timeout",
    "countdown_problem",
    "name_list",
    "parse_rate_limit",
]

_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*(s|sec|second|m|min|minute|h|hour)\s*$")
_UNITS = {
    "s": 1.0,
    "sec": 1.0,
    "second": 1.0,
    "m": 60.0,
    "min": 60.0,
    "minute": 60.0,
    "h": 3600.0,
    "hour": 3600.0,
}


@dataclass(frozen=True, slots=True)
class RateLimit:
    """A token-bucket limit: ``rate`` tokens per second, bucket size ``burst``."""

    rate: float
    count: float
    burst: int | None = None


def parse_rate_limit(value: str | float | int, task: str, option: str = "rate_limit") -> RateLimit:
    """Parse ``"N/s"``, ``"N/m"``, ``"N/h"`` or a positive number per second (``option``
    names the option in errors)."""
    if isinstance(value, bool):
        raise ValueError(f"{task}: {option} must be 'N/s', 'N/m', 'N/h' or a number, not bool")
    if isinstance(value, int | float):
        if not math.isfinite(value) or value <= 0:
            raise ValueError(f"{task}: {option} must be positive, got {value!r}")
        return RateLimit(rate=float(value), count=float(value))
    if isinstance(value, str):
        match = _RATE.match(value)
        if match and float(match.group(1)) > 0:
            count = float(match.group(1))
            return RateLimit(rate=count / _UNITS[match.group(2)], count=count)
    raise ValueError(
        f"{task}: malformed {option} {value!r}: expected 'N/s', 'N/m', 'N/h' or a number"
    )


def _check_cluster_concurrency(value: Any, task: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{task}: cluster_concurrency must be a positive integer, got {value!r}")
    return value


def check_priority(value: Any, task: str) -> int:
    """Validate a 0-9 integer priority."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 9:
        raise ValueError(f"{task}: priority must be an integer 0-9, got {value!r}")
    return value


def check_timeout(value: Any, task: str, option: str = "timeout") -> float | None:
    """Validate a positive, finite duration in seconds (or None)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{task}: {option} must be a number of seconds, got {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{task}: {option} must be positive, got {value!r}")
    return float(value)


def _check_retries(value: Any, task: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{task}: retries must be a non-negative integer, got {value!r}")
    return value


def _check_nonneg(value: Any, task: str, option: str) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value < 0
    ):
        raise ValueError(f"{task}: {option} must be a finite, non-negative number, got {value!r}")
    return float(value)


MAX_DELAY = 100 * 365.25 * 86400.0
"""The furthest ahead a task may be scheduled (a countdown, an eta, a retry's countdown):
100 years, in seconds. Further is a mistake, and past the year 9999 no date can show it."""


def countdown_problem(countdown: object) -> str:
    """What is wrong with a ``countdown`` as a delay, or ``""`` (None is no countdown).
    A negative one is a time already past: a retry runs at once (a send refuses it)."""
    if countdown is None:
        return ""
    if (
        isinstance(countdown, bool)
        or not isinstance(countdown, int | float)
        or not math.isfinite(countdown)
    ):
        return f"must be a finite number of seconds, got {countdown!r}"
    if countdown > MAX_DELAY:
        return f"{countdown:g}s is more than 100 years ahead"
    return ""


def _with_guess(name: str) -> str:
    """``name``, with the option it is likely a misspelling of (``retires``: ``retries``)."""
    close = difflib.get_close_matches(name, sorted(TASK_OPTION_NAMES), n=1, cutoff=0.75)
    return f"{name} (did you mean {close[0]}?)" if close else name


HookFn = Callable[[Any], Any]


@dataclass(frozen=True, slots=True)
class TaskOptions:
    """Everything ``@app.task(...)`` accepts besides the function. ``None``: app default."""

    queue: str | None = None
    priority: int = 0
    retries: int | None = None
    retry_backoff: float = 1.0
    retry_backoff_max: float = 600.0
    retry_jitter: bool = True
    retry_on: tuple[type[BaseException], ...] = (Exception,)
    timeout: float | None = None
    rate_limit: RateLimit | None = None
    store_result: bool = True
    bind: bool = False
    on_success: HookFn | None = None
    on_failure: HookFn | None = None
    on_retry: HookFn | None = None
    on_start: HookFn | None = None
    serializer: str = "json"
    on_lost: str = "redeliver"
    cluster_rate_limit: RateLimit | None = None
    cluster_concurrency: int | None = None
    time_limit: float | None = None

    @classmethod
    def build(cls, task: str, raw: dict[str, Any]) -> TaskOptions:
        """Validate ``raw`` decorator keywords; errors name the task and option."""
        unknown = sorted(set(raw) - TASK_OPTION_NAMES)
        if unknown:
            named = ", ".join(_with_guess(name) for name in unknown)
            raise ValueError(f"{task}: unknown task option(s): {named}")
        opts: dict[str, Any] = dict(raw)
        opts.pop("rate_burst", None)
        _check_scalars(task, raw, opts)
        _check_flags(task, raw)
        if raw.get("rate_limit") is not None:
            opts["rate_limit"] = _rate_limit(task, raw["rate_limit"], raw.get("rate_burst"))
        if raw.get("cluster_rate_limit") is not None:
            opts["cluster_rate_limit"] = parse_rate_limit(
                raw["cluster_rate_limit"], task, "cluster_rate_limit"
            )
        if raw.get("cluster_concurrency") is not None:
            _check_cluster_concurrency(raw["cluster_concurrency"], task)
        if raw.get("time_limit") is not None:
            opts["time_limit"] = check_timeout(raw["time_limit"], task, "time_limit")
        for name in ("on_success", "on_failure", "on_retry", "on_start"):
            if raw.get(name) is not None:
                check_hook(raw[name], f"{task}: {name}")
        return cls(**opts)


TASK_OPTION_NAMES = frozenset({f.name for f in fields(TaskOptions)} | {"rate_burst"})
"""What ``@app.task(...)`` accepts: the :class:`TaskOptions` fields, and ``rate_burst``,
which :meth:`TaskOptions.build` folds into ``rate_limit``."""


def _check_scalars(task: str, raw: dict[str, Any], opts: dict[str, Any]) -> None:
    if "priority" in raw:
        check_priority(raw["priority"], task)
    if raw.get("retries") is not None:
        _check_retries(raw["retries"], task)
    if "timeout" in raw:
        opts["timeout"] = check_timeout(raw["timeout"], task)
    for name in ("retry_backoff", "retry_backoff_max"):
        if name in raw:
            opts[name] = _check_nonneg(raw[name], task, name)
    if raw.get("queue") is not None:
        check_queue(raw["queue"], task)
    if "retry_on" in raw:
        opts["retry_on"] = _check_retry_on(raw["retry_on"], task)
    if "serializer" in raw:
        _check_serializer(raw["serializer"], task)
    if "on_lost" in raw:
        _check_on_lost(raw["on_lost"], task)


def _check_flags(task: str, raw: dict[str, Any]) -> None:
    for name in ("retry_jitter", "store_result", "bind"):
        # ``store_result="no"`` (a setting read from text) would be taken as true.
        if name in raw and not isinstance(raw[name], bool):
            raise ValueError(f"{task}: {name} must be True or False, got {raw[name]!r}")
    if raw.get("rate_burst") is not None and raw.get("rate_limit") is None:
        raise ValueError(f"{task}: rate_burst is the burst of a rate_limit; give rate_limit too")


def _rate_limit(task: str, value: Any, burst: Any) -> RateLimit:
    limit = parse_rate_limit(value, task)
    if burst is not None and (isinstance(burst, bool) or not isinstance(burst, int) or burst < 1):
        raise ValueError(f"{task}: rate_burst must be a positive integer, got {burst!r}")
    return RateLimit(limit.rate, limit.count, burst)


SERIALIZERS = {"json": "application/json", "msgpack": "application/x-msgpack"}
"""Payload serializer names (the ``serializer=`` task option) and their content types."""


def _check_serializer(value: Any, task: str) -> str:
    if value not in SERIALIZERS:
        raise ValueError(f"{task}: serializer must be one of {sorted(SERIALIZERS)}, got {value!r}")
    # Fail at the decorator, not at the first enqueue, when the optional library is missing.
    if value == "msgpack" and importlib.util.find_spec("msgpack") is None:
        raise ValueError(
            f"{task}: serializer='msgpack' needs pip install 'taskflow-queue[msgpack]'"
        )
    return str(value)


ON_LOST = ("redeliver", "fail")
"""What a delivery lost with its worker does: delivered again (up to the app's
``max_deliveries``), or dead-lettered ``worker_lost`` at once (a task that must not run twice)."""


def _check_on_lost(value: Any, task: str) -> str:
    if value not in ON_LOST:
        raise ValueError(f"{task}: on_lost must be 'redeliver' or 'fail', got {value!r}")
    return str(value)


def check_queue(value: Any, task: str) -> str:
    """Validate a queue name: non-empty, printable, without whitespace."""
    # Every whitespace character but the space is unprintable, as are control characters.
    if not isinstance(value, str) or not value or not value.isprintable() or " " in value:
        raise ValueError(
            f"{task}: queue must be a non-empty name of printable characters without "
            f"spaces, got {value!r}"
        )
    return value


def check_hook(hook: Any, what: str) -> None:
    """Raise ValueError unless ``hook`` can be called with one event: a hook that cannot
    would fail, logged and ignored, at every event."""
    if not callable(hook):
        raise ValueError(f"{what} must be callable, got {hook!r}")
    try:
        signature = inspect.signature(hook)
    except (TypeError, ValueError):  # a builtin without one: taken as it is
        return
    try:
        signature.bind(None)
    except TypeError:
        name = getattr(hook, "__qualname__", type(hook).__qualname__)
        raise ValueError(
            f"{what} must take one argument (the TaskEvent), got {name}{signature}"
        ) from None


def check_name(value: Any, what: str) -> str:
    """``value`` if it is non-empty printable text, else ``ConfigError`` (a ``ValueError``)
    naming ``what``: a name that goes into log lines, where a newline would forge a line,
    and into keys, where an empty one would name nothing."""
    if not isinstance(value, str) or not value or not value.isprintable():
        raise ConfigError(f"{what} must be non-empty printable text, got {value!r}")
    return value


def check_task_id(value: Any, what: str, *, sending: bool = False) -> str:
    """A task id given by a caller: a non-empty string (a ``uuid.UUID`` as its text);
    ``ConfigError`` (a ``ValueError``) otherwise. One to send under must be printable too:
    it goes into log lines and broker headers, where a newline would forge a line. One to
    look up need not: another producer's message may have been recorded under such an id,
    and its dead letter names it."""
    if isinstance(value, uuid.UUID):
        return str(value)
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{what}: task_id must be a non-empty string, got {value!r}")
    if sending and not value.isprintable():
        raise ConfigError(f"{what}: task_id must be printable text (no control characters)")
    return value


def name_list(value: Any, what: str) -> list[str]:
    """``value`` (an iterable of names) as a list; one string is refused, since iterating
    it would give its letters (``queues="emails"`` read as seven one-letter queues)."""
    if isinstance(value, str | bytes):
        raise ConfigError(f"{what} must be a list of names, not one string: use [{value!r}]")
    return list(value)


def call_arguments(args: Any, kwargs: Any, what: str) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """A send's ``args`` (None, a list, a tuple or another iterable) and ``kwargs`` (None or
    a mapping of names) as a tuple and a dict. A string, bytes, a mapping or a set as
    ``args`` is refused: iterating it gives letters, keys or an arbitrary order
    (``args=("hello")`` forgot its comma and would send five arguments)."""
    if args is None:
        positional: tuple[Any, ...] = ()
    elif isinstance(args, tuple):
        positional = args
    elif isinstance(args, str | bytes | bytearray | memoryview | Mapping | Set) or not (
        isinstance(args, Iterable)
    ):
        # Never the value itself: it is the task's payload.
        one = "; one argument is written (value,)" if isinstance(args, str | bytes) else ""
        raise TypeError(
            f"{what}: args must be a list or tuple of positional arguments, "
            f"got {type(args).__name__}{one}"
        )
    else:
        positional = tuple(args)
    if kwargs is None:
        return positional, {}
    if not isinstance(kwargs, Mapping):
        raise TypeError(
            f"{what}: kwargs must be a mapping of argument names, got {type(kwargs).__name__}"
        )
    named = dict(kwargs)
    for key in named:
        if not isinstance(key, str):
            raise TypeError(f"{what}: kwargs' names must be strings, got {key!r}")
    return positional, named


def _check_retry_on(value: Any, task: str) -> tuple[type[BaseException], ...]:
    items = value if isinstance(value, tuple | list) else (value,)
    for item in items:
        if not (isinstance(item, type) and issubclass(item, BaseException)):
            raise ValueError(f"{task}: retry_on must hold exception classes, got {item!r}")
    return tuple(items)
