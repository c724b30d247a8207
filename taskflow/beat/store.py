"""Beat state in the result store, written only with ``set_nx/get_value/delete_value``.

Keys (``A`` is the app name)::

    beat:A:schedules          JSON {"schedules": {name: spec}, "paused": [name, ...]}
    beat:A:schedules:lock     short lock around a read-modify-write of that document
    beat:A:last:<name>        JSON {"ts": fire time} of the schedule's last handled run
    beat:A:leader:<epoch>     id of the beat that leads during lease epoch <epoch>

The store has no "set" that overwrites, so :meth:`BeatStore._put` deletes then sets. That
is not atomic, which is fine here: the schedule document is only written under its lock,
and a last-fire time written twice (by two beats that briefly both lead) is written with
the same value; a run fired twice is deduplicated by its idempotency key anyway.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

from .. import codec
from ..errors import TaskflowError
from ..results.base import ResultStore

__all__ = ["BeatStore", "ScheduleDoc"]

T = TypeVar("T")

LOCK_TTL = 5.0
LOCK_WAIT = 10.0


class ScheduleDoc:
    """The stored schedules of one app: specs by name and the set of paused names."""

    def __init__(
        self, schedules: dict[str, dict[str, Any]] | None = None, paused: set[str] | None = None
    ) -> None:
        self.schedules = schedules or {}
        self.paused = paused or set()

    @classmethod
    def parse(cls, raw: str | None) -> ScheduleDoc:
        """Decode the stored JSON (an absent key is an empty document)."""
        if raw is None:
            return cls()
        data = codec.loads(raw)
        return cls(dict(data.get("schedules") or {}), set(data.get("paused") or ()))

    def dumps(self) -> str:
        """The JSON to store."""
        return codec.dumps({"schedules": self.schedules, "paused": sorted(self.paused)}).decode()


class BeatStore:
    """Beat's keys of one app in a result store."""

    def __init__(self, results: ResultStore, app_name: str) -> None:
        self.results = results
        self.base = f"beat:{app_name}"

    # -- the schedule document -------------------------------------------------------
    async def read(self) -> ScheduleDoc:
        """The stored schedules (one read)."""
        return ScheduleDoc.parse(await self.results.get_value(f"{self.base}:schedules"))

    async def modify(self, change: Callable[[ScheduleDoc], T]) -> T:
        """Apply ``change`` to the document under the lock and store it; return its result."""
        token = uuid.uuid4().hex
        lock = f"{self.base}:schedules:lock"
        await self._acquire(lock, token)
        try:
            doc = await self.read()
            result = change(doc)
            await self._put(f"{self.base}:schedules", doc.dumps())
            return result
        finally:
            # Only our own lock: if it expired and another writer holds it now, leave it.
            if await self.results.get_value(lock) == token:
                await self.results.delete_value(lock)

    async def _acquire(self, lock: str, token: str) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + LOCK_WAIT
        pause = 0.005
        while await self.results.set_nx(lock, token, LOCK_TTL) is not None:
            if loop.time() > deadline:
                raise TaskflowError(f"could not lock {lock!r} within {LOCK_WAIT:g}s")
            await asyncio.sleep(pause)  # another writer holds it for a few milliseconds
            pause = min(pause * 2, 0.2)

    # -- last fire times -------------------------------------------------------------
    async def last(self, name: str) -> float | None:
        """The last handled fire time of ``name``, or None for a schedule never seen."""
        raw = await self.results.get_value(f"{self.base}:last:{name}")
        return None if raw is None else float(codec.loads(raw)["ts"])

    async def set_last(self, name: str, fire_ts: float) -> None:
        """Record that the run at ``fire_ts`` was handled (fired or skipped)."""
        await self._put(f"{self.base}:last:{name}", codec.dumps({"ts": fire_ts}).decode())

    async def start_from(self, name: str, ts: float) -> None:
        """Count runs of a schedule never seen before from ``ts`` (keeps a known last run)."""
        await self.results.set_nx(
            f"{self.base}:last:{name}", codec.dumps({"ts": ts}).decode(), None
        )

    async def forget_last(self, name: str) -> None:
        """Forget the last fire time: the schedule starts afresh from the next run."""
        await self.results.delete_value(f"{self.base}:last:{name}")

    # -- leadership ------------------------------------------------------------------
    async def claim(self, epoch: int, me: str, ttl: float) -> str:
        """Try to lead lease epoch ``epoch``; return who leads it (``me`` if we won)."""
        existing = await self.results.set_nx(f"{self.base}:leader:{epoch}", me, ttl)
        return me if existing is None else existing

    async def release(self, epoch: int, me: str) -> None:
        """Give up epoch ``epoch`` if we hold it, so that another beat takes over at once."""
        key = f"{self.base}:leader:{epoch}"
        if await self.results.get_value(key) == me:
            await self.results.delete_value(key)

    async def _put(self, key: str, value: str) -> None:
        for _ in range(3):
            await self.results.delete_value(key)
            if await self.results.set_nx(key, value, None) is None:
                return
