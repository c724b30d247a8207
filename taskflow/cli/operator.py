"""The commands of the ``taskflow`` group that are imported only when they run.

The operator commands (API.md section 9), ``admin`` and ``grpc`` bring in rich, the
operations API and their backends; ``beat`` and ``schedules`` bring in the beat's modules
(cron expressions, time zones). ``taskflow worker`` uses none of them (the beat's only
with ``--beat``), so the group knows them by name and module and imports one when it is
invoked (or listed by ``--help``). A worker then starts without paying for their imports.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping

import click

__all__ = ["LAZY_COMMANDS", "LazyGroup"]

# The command's name -> ``module:attribute`` (relative to this package) of its click command.
LAZY_COMMANDS: Mapping[str, str] = {
    "admin": ".admin_cmd:admin",
    "audit": ".ops:audit",
    "beat": ".beat:beat",
    "dlq": ".dlq:dlq",
    "events": ".tasks:events",
    "grpc": ".grpc_cmd:grpc_command",
    "inspect": ".ops:inspect",
    "pause": ".ops:pause",
    "paused": ".ops:paused",
    "purge": ".ops:purge",
    "queues": ".ops:queues",
    "resume": ".ops:resume",
    "schedules": ".beat:schedules",
    "send": ".tasks:send",
    "snapshot": ".snapshot:snapshot",
    "stats": ".ops:stats",
    "task": ".tasks:task",
    "workers": ".ops:workers",
}


class LazyGroup(click.Group):
    """A click group that also serves the commands of :data:`LAZY_COMMANDS`, each imported
    the first time it is asked for."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *LAZY_COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in LAZY_COMMANDS:
            module, _, attr = LAZY_COMMANDS[cmd_name].partition(":")
            command = getattr(importlib.import_module(module, __package__), attr)
            self.add_command(command, cmd_name)
        return super().get_command(ctx, cmd_name)
