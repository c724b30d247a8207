"""The operator commands (API.md section 9), added to the ``taskflow`` group in one call."""

from __future__ import annotations

import click

from .dlq import dlq
from .ops import audit, inspect, pause, paused, purge, queues, resume, stats, workers
from .snapshot import snapshot
from .tasks import events, send, task

__all__ = ["OPERATOR_COMMANDS", "add_operator_commands"]

OPERATOR_COMMANDS: tuple[click.Command, ...] = (
    queues,
    inspect,
    task,
    send,
    dlq,
    purge,
    pause,
    resume,
    paused,
    workers,
    stats,
    events,
    snapshot,
    audit,
)


def add_operator_commands(group: click.Group) -> None:
    """Register every operator command on ``group``."""
    for command in OPERATOR_COMMANDS:
        group.add_command(command)
