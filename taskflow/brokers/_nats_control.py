"""The NATS broker's control channel: commands on core NATS, a cursor per reader."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

from nats.aio.msg import Msg

from .._nats.connection import Connection

__all__ = ["ControlLog"]


class ControlLog:
    """Commands received on ``P.ctl``, read by each task from where it left off."""

    def __init__(self, conn: Connection) -> None:
        """A log fed by :meth:`on_control`; readers wait only while ``conn`` is open."""
        self._conn = conn
        self._log: list[dict[str, Any]] = []
        self._base = 0  # absolute index of self._log[0]
        self._cursors: dict[int, int] = {}
        self._wakers: list[asyncio.Future[None]] = []

    async def on_control(self, msg: Msg) -> None:
        """The subscription's callback: one command (malformed ones are dropped)."""
        with contextlib.suppress(ValueError):
            command = json.loads(msg.data)
            if isinstance(command, dict):
                self._log.append(command)
                if len(self._log) > 10_000:
                    del self._log[:5_000]
                    self._base += 5_000
                self.wake()

    def wake(self) -> None:
        """Wake every waiting reader."""
        wakers, self._wakers = self._wakers, []
        for fut in wakers:
            if not fut.done():
                fut.set_result(None)

    async def read(self, timeout: float) -> list[dict[str, Any]]:
        """Commands received since this task's previous read, waiting up to ``timeout``."""
        key = id(asyncio.current_task())
        end = self._base + len(self._log)
        cursor = self._cursors.setdefault(key, end)
        if cursor >= end and timeout > 0 and self._conn.connected:
            fut = asyncio.get_running_loop().create_future()
            self._wakers.append(fut)
            await asyncio.wait([fut], timeout=timeout)
        end = self._base + len(self._log)
        self._cursors[key] = end
        return self._log[max(0, cursor - self._base) :]

    def forget(self) -> None:
        """Drop the current task's cursor (a stopping worker calls this)."""
        self._cursors.pop(id(asyncio.current_task()), None)
