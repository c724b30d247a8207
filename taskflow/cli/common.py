"""What the command line's commands share: one-line errors, logging set-up, loading the app.

``taskflow worker`` (:mod:`.main`) and the beat and schedule commands (:mod:`.beat`) both
build on this module, so neither imports the other's internals.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import IO, Any

import click

from ..app import App
from ..logs import JsonFormatter, TaskContextFilter
from ..worker.foreground import EXIT_FAILED, EXIT_USAGE
from .loader import AppLoadError, load_app

__all__ = [
    "LOG_FORMAT",
    "CliError",
    "CliRuntimeError",
    "configure_logging",
    "load",
    "logging_setup",
]

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class CliError(click.ClickException):
    """A usage or configuration error: one ``taskflow: error: ...`` line, exit status 2."""

    exit_code = EXIT_USAGE

    def show(self, file: IO[Any] | None = None) -> None:
        """Print the message as one line, without click's usage block."""
        message = " ".join(self.format_message().split())
        click.echo(f"taskflow: error: {message}", file=file, err=file is None)


class CliRuntimeError(CliError):
    """The worker could not run (e.g. its broker is unreachable): one line, exit status 1."""

    exit_code = EXIT_FAILED


class _CliHandler(logging.StreamHandler[IO[str]]):
    """The handler the command line installs (told apart so it can be replaced)."""


def _user_configured_logging() -> bool:
    """Whether the program put a handler of its own on the root or a ``taskflow`` logger."""
    loggers = [logging.getLogger()] + [
        logger
        for name, logger in logging.Logger.manager.loggerDict.items()
        if isinstance(logger, logging.Logger)
        and (name == "taskflow" or name.startswith("taskflow."))
    ]
    return any(
        not isinstance(handler, _CliHandler) for logger in loggers for handler in logger.handlers
    )


@contextmanager
def configure_logging(
    level: str, log_format: str = "text", worker_id: str | None = None
) -> Iterator[None]:
    """Configure logging now (see :func:`logging_setup`); undo it afterwards."""
    with logging_setup(level, log_format, worker_id) as configure:
        configure()
        yield


def _json_handler(worker_id: str | None) -> _CliHandler:
    handler = _CliHandler(sys.stderr)
    handler.addFilter(TaskContextFilter())
    handler.setFormatter(JsonFormatter(worker_id))
    return handler


@contextmanager
def logging_setup(
    level: str, log_format: str = "text", worker_id: str | None = None
) -> Iterator[Callable[[], None]]:
    """Yield a function that sets up logging for a command; undo what it did on exit.

    The function logs the ``taskflow`` logger to stderr at ``level`` in the compact format,
    unless the program configured logging itself (a handler on the root logger or on a
    ``taskflow`` logger): then its handlers get the lines, and ``level`` is set only on a
    ``taskflow`` logger that has none. Commands call it once the app module was imported
    (it may configure logging) and keep it until the app is closed (whose last lines,
    such as "stopped", are logged then).

    With ``log_format="json"`` the handler goes on the root logger instead, so that the
    lines a task logs through its own loggers are JSON objects with its ``task_id`` and
    ``task_name`` too; ``worker_id`` names the process in every line.
    """
    logger = logging.getLogger("taskflow")
    root = logging.getLogger()
    saved_level, saved_propagate, saved_root = logger.level, logger.propagate, root.level
    added: list[tuple[logging.Logger, logging.Handler]] = []
    removed: list[logging.Handler] = []

    def configure() -> None:
        if _user_configured_logging():
            if logger.level == logging.NOTSET:
                logger.setLevel(level.upper())
            return
        for old in [h for h in logger.handlers if isinstance(h, _CliHandler)]:
            logger.removeHandler(old)
            removed.append(old)
        logger.setLevel(level.upper())
        if log_format == "json":
            handler = _json_handler(worker_id)
            root.addHandler(handler)
            root.setLevel(level.upper())
            added.append((root, handler))
            return
        handler = _CliHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        logger.addHandler(handler)
        added.append((logger, handler))
        # Our handler prints every line once; a root handler would print it a second time.
        logger.propagate = False

    try:
        yield configure
    finally:
        for owner, handler in added:
            owner.removeHandler(handler)
        for handler in removed:
            logger.addHandler(handler)
        logger.setLevel(saved_level)
        root.setLevel(saved_root)
        logger.propagate = saved_propagate


def load(spec: str) -> App:
    """Import the app named by ``spec`` (``-A``); a failure is a :class:`CliError`."""
    try:
        return load_app(spec)
    except AppLoadError as exc:
        raise CliError(str(exc)) from None
