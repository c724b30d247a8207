"""Structured logging: one JSON object per line, with the running task's id and name.

``taskflow worker --log-format json`` (or ``TASKFLOW_LOG_FORMAT=json``) installs a handler
with :class:`JsonFormatter` and :class:`TaskContextFilter`. A program that configures
logging itself can use both in its own configuration::

    handler = logging.StreamHandler()
    handler.addFilter(TaskContextFilter())
    handler.setFormatter(JsonFormatter(worker_id="node-1"))

The filter reads the task context the worker binds around a task body (a contextvar, see
:func:`taskflow.context.current_task`), so a user's own ``log.info(...)`` inside a task
carries ``task_id`` and ``task_name`` too. taskflow never logs argument or result values.
"""

from __future__ import annotations

import logging
import os
import socket
from datetime import UTC, datetime
from typing import Any

import orjson

from .context import current_task

__all__ = [
    "LOG_FORMATS",
    "LOG_FORMAT_ENV",
    "JsonFormatter",
    "TaskContextFilter",
    "default_worker_id",
]

LOG_FORMATS = ("text", "json")
LOG_FORMAT_ENV = "TASKFLOW_LOG_FORMAT"

# Attributes every LogRecord has; anything else was passed through ``extra=``.
_STANDARD = frozenset(
    logging.LogRecord("", 0, "", 0, "", None, None).__dict__.keys()
    | {"message", "asctime", "task_id", "task_name", "taskName"}
)


def default_worker_id() -> str:
    """``host:pid``: names the process in log lines when no worker name is given."""
    return f"{socket.gethostname()}:{os.getpid()}"


class TaskContextFilter(logging.Filter):
    """Sets ``task_id`` and ``task_name`` on every record (None outside a task).

    A record that carries them already keeps them: one a body logged in a child process
    of the process pool comes to the worker with the ids of the task that logged it.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        """Annotate ``record``; never drops it."""
        if "task_id" in record.__dict__:
            return True
        ctx = current_task()
        record.task_id = ctx.id if ctx is not None else None
        record.task_name = ctx.name if ctx is not None else None
        return True


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON object on one line.

    Keys: ``timestamp`` (ISO 8601, UTC), ``level``, ``logger``, ``message``, ``worker``, and
    when set ``task_id``/``task_name`` (see :class:`TaskContextFilter`), ``exception`` (the
    formatted traceback) and the keys of ``extra=``.
    """

    def __init__(self, worker_id: str | None = None) -> None:
        super().__init__()
        self.worker_id = worker_id or default_worker_id()

    def format(self, record: logging.LogRecord) -> str:
        """The JSON line for ``record`` (without the newline)."""
        data: dict[str, Any] = {
            "timestamp": datetime.fromtimestamp(record.created, UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "worker": self.worker_id,
        }
        task_id = getattr(record, "task_id", None)
        if task_id is not None:
            data["task_id"] = task_id
            data["task_name"] = getattr(record, "task_name", None)
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            data["exception"] = record.exc_text
        for key, value in record.__dict__.items():
            if key not in _STANDARD and key not in data:
                data[key] = value
        return orjson.dumps(data, default=repr).decode()
