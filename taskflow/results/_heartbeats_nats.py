"""Worker heartbeats and the audit trail in the NATS result store's KV bucket.

Each entry is a value of the store's bucket written like its other values
(``{"v": ..., "x": expiry}``), so it reads as absent once its retention passed and the
store's janitor deletes it physically:

* ``hb.<hex of the worker id>``: the heartbeat (a worker id holds ``:``, not a KV token).
* ``au.<microseconds of at, 20 digits>.<nonce>``: one audit entry; the key sorts by time.

Listing asks the bucket's stream which keys exist under ``hb.>`` or ``au.>`` (per-subject
counts), then reads each.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from nats.js.client import JetStreamContext
from nats.js.errors import NotFoundError
from nats.js.kv import KeyValue

__all__ = ["Bucket", "add_audit", "audit", "put_worker", "remove_worker", "workers"]

Call = Callable[[Awaitable[Any]], Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class Bucket:
    """The store's KV bucket: its name, the bucket and the JetStream context it is on."""

    bucket: str
    kv: KeyValue
    js: JetStreamContext


def _worker_key(worker_id: str) -> str:
    return f"hb.{worker_id.encode().hex()}"


def _encode(value: Any, expires: float) -> bytes:
    return json.dumps({"v": value, "x": expires}, separators=(",", ":")).encode()


async def _keys(call: Call, store: Bucket, keys: str) -> list[str]:
    """The keys under the filter ``keys`` (sorted), from the stream's per-subject counts.

    Not a KV watch: its "no more values" marker can come before a value already on its
    way (nats-py's initial marker races the first delivery), hiding an entry now and then.
    """
    prefix = f"$KV.{store.bucket}."
    info = await call(store.js.stream_info(f"KV_{store.bucket}", subjects_filter=prefix + keys))
    return sorted(subject[len(prefix) :] for subject in info.state.subjects or {})


async def _read(call: Call, store: Bucket, key: str, now: float) -> tuple[int, Any] | None:
    """(revision, value) of a live value, or None (absent, deleted, expired)."""
    try:
        entry = await call(store.kv.get(key))
    except NotFoundError:  # deleted or purged meanwhile
        return None
    if not entry.value:
        return None
    with contextlib.suppress(ValueError, TypeError, AttributeError):
        stored = json.loads(entry.value)
        expires = stored.get("x")
        if expires is None or float(expires) > now:
            return int(entry.revision or 0), stored.get("v")
    return None


async def _read_many(
    call: Call, store: Bucket, keys: list[str], now: float
) -> list[tuple[int, Any]]:
    found = await asyncio.gather(*(_read(call, store, key, now) for key in keys))
    return [item for item in found if item is not None]


async def put_worker(
    call: Call, store: Bucket, now: float, info: dict[str, Any], retention: float
) -> None:
    """Upsert ``info`` under its id, live until ``now + retention``."""
    await call(store.kv.put(_worker_key(str(info["id"])), _encode(info, now + retention)))


async def remove_worker(call: Call, store: Bucket, worker_id: str) -> None:
    """Purge a worker's entry (no error if there is none)."""
    with contextlib.suppress(NotFoundError):
        await call(store.kv.purge(_worker_key(worker_id)))


async def workers(call: Call, store: Bucket, now: float) -> list[dict[str, Any]]:
    """The live entries, by id."""
    scanned = await _read_many(call, store, await _keys(call, store, "hb.>"), now)
    found = [value for _, value in scanned if isinstance(value, dict)]
    return sorted(found, key=lambda info: str(info.get("id")))


async def add_audit(
    call: Call, store: Bucket, now: float, entry: dict[str, Any], retention: float
) -> None:
    """Store ``entry`` under a new key that sorts by its time."""
    at = float(entry.get("at") or now)
    key = f"au.{max(0, int(at * 1_000_000)):020d}.{uuid.uuid4().hex[:12]}"
    await call(store.kv.put(key, _encode(entry, now + retention)))


async def audit(call: Call, store: Bucket, now: float, limit: int) -> list[dict[str, Any]]:
    """Up to ``limit`` live entries, newest first (by ``at``, then by order of writing).

    Keys sort by time, so only the newest are read, a page of ``limit`` at a time.
    """
    if limit <= 0:
        return []
    keys = await _keys(call, store, "au.>")
    found: list[tuple[int, Any]] = []
    end = len(keys)
    while end > 0 and len(found) < limit:
        start = max(0, end - limit)
        page = await _read_many(call, store, keys[start:end], now)
        found += [item for item in page if isinstance(item[1], dict)]
        end = start
    found.sort(key=lambda item: (float(item[1].get("at") or 0.0), item[0]), reverse=True)
    return [value for _, value in found[:limit]]
