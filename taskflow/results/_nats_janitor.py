"""Physical retention for the NATS result store.

nats-server before 2.11 has no per-message TTL, and a bucket-wide ``max_age`` would also
drop live records that merely wait long in a queue. So the store keeps each value's expiry
inside it (exact on every read) and a janitor deletes what has expired: every
``sweep_interval`` seconds one process of the app (whichever takes the short ``janitor``
lease first) reads the bucket once and deletes, by stream sequence, every expired value and
every delete marker. Each removal is a purge of the key bounded by the sequence that was
seen expired, which is safe against writers: a value rewritten meanwhile has a higher
sequence and stays, and a compare-and-set against a removed sequence fails and re-reads
an absent key.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from typing import Any

import nats.errors
from nats.js.kv import KV_DEL, KV_PURGE, KeyValue

from .._nats.connection import Connection
from ..errors import BrokerError
from .base import ResultStore

__all__ = ["Janitor", "sweep"]

log = logging.getLogger("taskflow.results")

_LEASE = "janitor"
_READ_TIMEOUT = 5.0


def _expired(entry: Any, now: float) -> bool:
    if entry.operation in (KV_DEL, KV_PURGE):
        return True
    try:
        expires = json.loads(entry.value).get("x")
    except (ValueError, TypeError, AttributeError):
        return False  # not written by taskflow: leave it alone
    return isinstance(expires, int | float) and expires <= now


async def sweep(conn: Connection, kv: KeyValue, bucket: str, now: float) -> int:
    """Delete every value of ``kv`` (the bucket called ``bucket``) expired by ``now`` and
    every delete marker, now; how many."""
    # The scan reads the latest entry of every key and ends at the bucket's last message as
    # of now. Neither the watcher's marker for the end of the initial values nor an entry
    # with nothing pending after it says that: nats-py sends the marker at once when the
    # consumer reports nothing pending and nothing has arrived yet, which is also the case
    # while the server's first entries are still on their way (seen on a loaded machine:
    # the marker came first, and the sweep removed nothing), and an entry's count of those
    # pending may reach zero under concurrent writes with more of the initial ones to come
    # (nats-io/nats.py#842, #995). Were that last message removed meanwhile (by another
    # sweep: the lease makes it rare), the scan would stall; the round is skipped.
    info = await conn.api(f"STREAM.INFO.KV_{bucket}", {})
    state = info.get("state") or {}
    if not state.get("messages"):
        return 0
    last = int(state.get("last_seq") or 0)
    watcher = await conn.call(kv.watch(">"))
    doomed: list[tuple[str, int]] = []
    try:
        while True:
            try:
                entry = await watcher.updates(timeout=_READ_TIMEOUT)
            except nats.errors.TimeoutError:
                raise BrokerError(f"NATS {conn.masked}: bucket scan stalled") from None
            if entry is None or entry.revision is None:  # the marker: maybe early (above)
                continue
            revision = int(entry.revision)
            if _expired(entry, now):
                doomed.append((entry.key, revision))
            if revision >= last:
                break
    finally:
        with contextlib.suppress(Exception):
            await watcher.stop()
    removed = 0
    for key, seq in doomed:
        removed += await _delete(conn, bucket, key, seq)
    return removed


async def _delete(conn: Connection, bucket: str, key: str, seq: int) -> int:
    # A purge of the key's subject up to and including ``seq``: KV buckets deny deleting a
    # single message, and the bound keeps a value written after the scan.
    subject = f"$JS.API.STREAM.PURGE.KV_{bucket}"
    payload = json.dumps({"filter": f"$KV.{bucket}.{key}", "seq": seq + 1}).encode()
    reply = await conn.call(conn.client().request(subject, payload, timeout=_READ_TIMEOUT))
    answer = json.loads(reply.data)
    error = answer.get("error")
    if error:
        raise BrokerError(f"NATS {conn.masked}: purge: {error.get('description')}")
    return int(answer.get("purged") or 0)


class Janitor:
    """The background task that runs ``store.sweep()`` every ``interval`` seconds, in one
    process of the app per round (the one whose ``set_nx`` takes the round's lease)."""

    def __init__(self, store: ResultStore, interval: float) -> None:
        self._store = store
        self._interval = interval
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start on the running loop (idempotent)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Stop and wait for the task to end."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        failing = False
        while True:
            # Jitter, so the processes of one app do not all ask for the lease at once.
            await asyncio.sleep(self._interval * random.uniform(0.8, 1.2))
            try:
                # One sweeper per interval across the app: the lease expires before the
                # next round, so a sweeper that went away is replaced.
                if await self._store.set_nx(_LEASE, "1", self._interval * 0.9) is None:
                    removed = await self._store.sweep()
                    log.debug("result store %s: removed %d expired entries", self._store, removed)
                failing = False
            except Exception as exc:  # a failed round is retried next round, never fatal
                if not failing:  # once per outage, not once per round
                    log.warning("%r: clean-up skipped: %s", self._store, exc)
                failing = True
