"""uvloop's event loop, as an app's loop thread runs it (imported only where uvloop is).

One difference from asyncio's loop matters to taskflow: uvloop starts a program
(``asyncio.create_subprocess_exec`` and ``_shell``) in C, so none of the audit events that
Python raises before it makes a child process (``subprocess.Popen``, ``os.fork``) is raised.
This loop raises :data:`SUBPROCESS_EVENT` first, for the hooks that act before a child is
made: a worker pinned to one CPU gives the loop's thread its CPUs back, so that the child
does not inherit the one CPU (:mod:`taskflow.worker.affinity`).
"""

from __future__ import annotations

import sys
from typing import Any

import uvloop

from .loop import SUBPROCESS_EVENT

__all__ = ["Loop"]


class Loop(uvloop.Loop):
    """uvloop's loop, raising :data:`SUBPROCESS_EVENT` before it starts a program."""

    async def subprocess_exec(  # type: ignore[override]
        self, protocol_factory: Any, program: Any, *args: Any, **kwargs: Any
    ) -> Any:
        sys.audit(SUBPROCESS_EVENT, program)
        return await super().subprocess_exec(protocol_factory, program, *args, **kwargs)

    async def subprocess_shell(self, protocol_factory: Any, cmd: Any, **kwargs: Any) -> Any:
        sys.audit(SUBPROCESS_EVENT, cmd)
        return await super().subprocess_shell(protocol_factory, cmd, **kwargs)
