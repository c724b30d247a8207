"""Options shared by the commands (``-A``, ``--loglevel``, ``--connect-timeout``), declared once."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

__all__ = ["APP_ENV", "LOG_LEVELS", "app_option", "connect_timeout_option", "loglevel_option"]

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
