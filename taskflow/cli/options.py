"""Options shared by the commands (``-A``, ``--loglevel``, ``--connect-timeout``), declared once."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from ..logs import LOG_FORMAT_ENV, LOG_FORMATS

__all__ = [
    "APP_ENV",
    "LOG_LEVELS",
    "app_option",
    "connect_timeout_option",
    "log_format_option",
    "loglevel_option",
]

F = TypeVar("F", bound=Callable[..., Any])

APP_ENV = "TASKFLOW_APP"
LOG_LEVELS = ("debug", "info", "warning", "error")


def app_option(fn: F) -> F:
    """``-A/--app MODULE[:ATTR]`` (or ``$TASKFLOW_APP``), passed as ``app_spec``."""
    return click.option(
        "-A",
        "--app",
        "app_spec",
        metavar="MODULE[:ATTR]",
        envvar=APP_ENV,
        help=f"The module holding the App (attribute 'app' by default); or ${APP_ENV}.",
    )(fn)


def loglevel_option(fn: F) -> F:
    """``-l/--loglevel`` for the taskflow logger."""
    return click.option(
        "--loglevel",
        "-l",
        type=click.Choice(LOG_LEVELS, case_sensitive=False),
        default="info",
        show_default=True,
        help="Level of the taskflow logger.",
    )(fn)


def log_format_option(fn: F) -> F:
    """``--log-format text|json`` (or ``$TASKFLOW_LOG_FORMAT``), passed as ``log_format``."""
    return click.option(
        "--log-format",
        "log_format",
        type=click.Choice(LOG_FORMATS, case_sensitive=False),
        default="text",
        show_default=True,
        envvar=LOG_FORMAT_ENV,
        help=f"Log lines as text or as one JSON object each; or ${LOG_FORMAT_ENV}.",
    )(fn)


def connect_timeout_option(fn: F) -> F:
    """``--connect-timeout SECONDS``: how long to retry reaching the broker at start-up."""
    return click.option(
        "--connect-timeout",
        "connect_timeout",
        type=click.FloatRange(min=0),
        default=60.0,
        show_default=True,
        metavar="SECONDS",
        help="Keep retrying an unreachable broker this long at start-up, then exit 1.",
    )(fn)
