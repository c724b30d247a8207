"""The NATS broker's limiter: shared limits in the broker's JetStream KV state bucket.

Keys (in the bucket of pause flags, so one app's limits go with its other state):

* ``limit.rate.<task>``: the GCRA theoretical arrival time, epoch seconds as text
* ``limit.conc.<task>``: the permit holders, a JSON object of holder -> expiry (epoch s)

``<task>`` is the task name as one subject token. Every change is a compare-and-set on the
entry's revision (``update(last=revision)``, ``create`` for a new key): two workers that
read the same revision cannot both write, and the loser reads again. NATS has no
server-side clock for a KV write, so time is each worker's own wall clock: keep the hosts'
clocks in sync (NTP), as leases on every backend need anyway.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from typing import Any, Final, TypeVar

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from .._nats.connection import Connection
from .._nats.names import subject_token
from .limits import ClusterLimiter, gcra

__all__ = ["NatsLimiter"]

T = TypeVar("T")

# Compare-and-set attempts before an operation gives up for now (heavy contention).
_ATTEMPTS: Final = 16
# How long a caller that lost every attempt waits before asking again.
_CONTENDED: Final = 0.01

Holders = dict[str, float]


class NatsLimiter(ClusterLimiter):
    """Limits in ``bucket`` on the broker's connection (connect the broker first)."""

    def __init__(self, conn: Connection, bucket: str, lease: float) -> None:
        self.lease = lease
        self._conn = conn
        self._bucket = bucket
        self._kv: tuple[object, KeyValue] | None = None

    async def _store(self) -> KeyValue:
        """The bucket, looked up once per connection (the broker created it)."""
        client = self._conn.client()
        if self._kv is None or self._kv[0] is not client:
            kv = await self._conn.call(self._conn.jetstream().key_value(self._bucket))
            self._kv = (client, kv)
        return self._kv[1]

    async def _read(self, key: str) -> tuple[bytes | None, int]:
        """The value and revision of ``key`` (None and 0 when there is none)."""
        kv = await self._store()
        try:
            entry = await self._conn.call(kv.get(key), keep=(KeyNotFoundError,))
        except KeyNotFoundError:  # includes a deleted key
            return None, 0
        return entry.value, entry.revision or 0

    async def _swap(self, key: str, change: Callable[[bytes | None], tuple[bytes | None, T]]) -> T:
        """Apply ``change`` (old value -> new value to write or None, and the answer)
        atomically with compare-and-set; retried while another worker wrote in between."""
        kv = await self._store()
        for _ in range(_ATTEMPTS):
            old, revision = await self._read(key)
            new, answer = change(old)
            if new is None:
                return answer
            write = kv.update(key, new, last=revision) if revision else kv.create(key, new)
            try:
                await self._conn.call(write, keep=(KeyWrongLastSequenceError,))
            except KeyWrongLastSequenceError:
                continue
            return answer
        raise _Contended

    async def take_token(self, key: str, rate: float, burst: int) -> float:
        """GCRA with compare-and-set on the bucket's entry."""
        now = time.time()

        def step(old: bytes | None) -> tuple[bytes | None, float]:
            wait, tat = gcra(float(old) if old else None, now, rate, burst)
            return (None if tat is None else repr(tat).encode()), wait

        try:
            return await self._swap(f"limit.rate.{subject_token(key)}", step)
        except _Contended:
            return _CONTENDED

    async def acquire(self, key: str, holder: str, limit: int) -> float:
        """A permit in the holders' entry, after dropping the expired ones."""
        now = time.time()

        def step(old: bytes | None) -> tuple[bytes | None, float]:
            holders = _live(old, now)
            if holder in holders or len(holders) < limit:
                holders[holder] = now + self.lease
                return _dump(holders), 0.0
            return None, max(0.001, min(holders.values()) - now)

        try:
            return await self._swap(_permits(key), step)
        except _Contended:
            return _CONTENDED

    async def renew(self, key: str, holders: Sequence[str]) -> list[bool]:
        """Extend the unexpired permits of ``holders``."""
        now = time.time()

        def step(old: bytes | None) -> tuple[bytes | None, list[bool]]:
            live = _live(old, now)
            renewed = [holder in live for holder in holders]
            for holder in holders:
                if holder in live:
                    live[holder] = now + self.lease
            return (_dump(live) if any(renewed) else None), renewed

        return await self._swap(_permits(key), step)

    async def release(self, key: str, holder: str) -> None:
        """Remove ``holder`` from the holders' entry."""
        now = time.time()

        def step(old: bytes | None) -> tuple[bytes | None, None]:
            live = _live(old, now)
            if live.pop(holder, None) is None:
                return None, None
            return _dump(live), None

        await self._swap(_permits(key), step)


class _Contended(Exception):
    """Every compare-and-set attempt lost to another writer."""


def _permits(key: str) -> str:
    return f"limit.conc.{subject_token(key)}"


def _live(raw: bytes | None, now: float) -> Holders:
    if not raw:
        return {}
    loaded: Any = json.loads(raw)
    return {str(h): float(e) for h, e in loaded.items() if float(e) > now}


def _dump(holders: Holders) -> bytes:
    return json.dumps(holders, separators=(",", ":")).encode()
