"""What the operator commands share: loading the app, one-line errors, common options.

Exit statuses: 0 when the command did what it was asked, 1 when the operation failed (an
unknown queue or task id, a backend that is down, a snapshot file that is not one), 2 for
bad usage (a malformed flag value, no app given). Errors are one line on stderr.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any, TypeVar

import click

from ..app import App
from ..errors import TaskflowError
from ..urls import mask_url
from .common import CliError, CliRuntimeError, load
from .options import APP_ENV, app_option
from .render import Output

__all__ = [
    "APPLY_HINT",
    "apply_option",
    "json_option",
    "ops_command",
    "parse_json",
    "session",
    "stopped_by_ctrl_c",
]

F = TypeVar("F", bound=Callable[..., Any])

APPLY_HINT = "dry run: nothing changed; add --apply to do it"


def json_option(fn: F) -> F:
    """``--json``: print JSON (one document, or one line per item of a stream)."""
    return click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")(
        fn
    )


def apply_option(fn: F) -> F:
    """``--apply``: without it a destructive command only says what it would do."""
    return click.option(
        "--apply", is_flag=True, help="Do it (without --apply: show what would be done)."
    )(fn)


def ops_command(fn: F) -> F:
    """The options every operator command takes: ``-A`` and ``--json``."""
    return app_option(json_option(fn))


def _message(exc: BaseException) -> str:
    if isinstance(exc, KeyError) and exc.args:
        return str(exc.args[0])  # KeyError's str() quotes its argument
    return " ".join(str(exc).split()) or type(exc).__name__


def _unreachable(app: App, exc: BaseException) -> str:
    urls = dict.fromkeys((mask_url(app.broker.url), mask_url(app.results.url)))
    where = " / ".join(urls)
    return f"backend unreachable ({where}): {type(exc).__name__}: {_message(exc)}"


@contextmanager
def session(spec: str | None, as_json: bool = False) -> Iterator[tuple[App, Output]]:
    """Load the app and an :class:`Output`; turn every error into one line and an exit
    status; close the app afterwards."""
    if not spec:
        raise CliError(f"no app given: pass -A MODULE[:ATTR] or set {APP_ENV}")
    app = load(spec)
    try:
        yield app, Output(as_json)
    except (click.ClickException, click.exceptions.Exit, click.Abort):
        raise
    except TaskflowError as exc:  # NotFound, UnknownQueue, BrokerError, a bad snapshot, ...
        raise CliRuntimeError(_message(exc)) from None
    except (OSError, TimeoutError) as exc:
        raise CliRuntimeError(_unreachable(app, exc)) from None
    except Exception as exc:
        # A client library's own connection errors (redis, nats) are not OSErrors.
        if "connect" in type(exc).__name__.lower() or "timeout" in type(exc).__name__.lower():
            raise CliRuntimeError(_unreachable(app, exc)) from None
        raise CliRuntimeError(f"{type(exc).__name__}: {_message(exc)}") from None
    finally:
        # The operation is over (done or failed): an error while closing changes nothing.
        with suppress(Exception):
            app.close()


@contextmanager
def stopped_by_ctrl_c(active: bool = True) -> Iterator[None]:
    """Treat Ctrl-C as the normal end of a stream or ``--watch`` (exit status 0), also
    while the app is loading or closing; with ``active`` false it aborts as usual."""
    try:
        yield
    except KeyboardInterrupt:
        if not active:
            raise


def parse_json(flag: str, text: str | None, kind: type) -> Any:
    """The value of a JSON flag (``--args``), checked to be a ``kind``; a malformed one is a
    usage error naming the flag and the line and column of the mistake."""
    if text is None:
        return kind()
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CliError(
            f"{flag}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
        ) from None
    if not isinstance(value, kind):
        expected = "an array" if kind is list else "an object"
        raise CliError(f"{flag} must be {expected}, got {type(value).__name__}")
    return value
