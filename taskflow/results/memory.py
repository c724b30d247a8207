"""In-memory result store: the reference implementation of the result-store contract."""

from __future__ import annotations

import asyncio
import copy
import threading
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from .._waiters import Waiters, wait_future
from ..clock import SYSTEM_CLOCK, Clock
from ..urls import url_kwargs
from .base import ResultStore, StoreCapabilities, is_terminal, restarted

__all__ = ["MemoryResultStore"]

_SWEEP_EVERY = 60.0  # seconds (on the store's clock) between sweeps made by writes
_AUDIT_MAX = 10_000  # audit entries kept at most, whatever their retention


class MemoryResultStore(ResultStore):
    """Records in a dict with TTLs and an optional bound on the number of records.

    ``max_entries``: when more records exist, the oldest *terminal* ones are dropped.
    Expired records and values read as absent at once; writes also drop every expired
    entry about once a minute (:meth:`sweep`), so a record nobody reads again does not
    stay in memory.
    """

    capabilities: ClassVar[StoreCapabilities] = StoreCapabilities(
        atomic_create=True, blocking=True, blocking_create=True
    )

    def __init__(self, *, max_entries: int | None = None, clock: Clock | None = None) -> None:
        self.url = "memory://"
        self.clock: Clock = clock or SYSTEM_CLOCK
        self.max_entries = max_entries
        self._lock = threading.Lock()
        # Plain dicts keep insertion order (oldest first) at a lower cost per entry than an
        # OrderedDict; expiry times live apart since most records never have one.
        self._records: dict[str, dict[str, Any]] = {}
        self._expiry: dict[str, float] = {}
        self._values: dict[str, tuple[Any, float | None]] = {}
        self._waiters: dict[str, Waiters] = {}
        self._writes = 0
        self._next_sweep = self.clock.time() + _SWEEP_EVERY
        self._workers: dict[str, tuple[dict[str, Any], float]] = {}  # id -> (info, expires)
        self._audit: deque[tuple[dict[str, Any], float]] = deque(maxlen=_AUDIT_MAX)

    @classmethod
    def from_url(cls, url: str, *, clock: Clock | None = None) -> MemoryResultStore:
        """Build from ``memory://`` (query option ``max_entries``)."""
        return cls(**url_kwargs(url, "results", cls), clock=clock)

    async def connect(self) -> None:
        """Nothing to connect."""

    async def close(self) -> None:
        """Nothing to release."""

    def _live(self, task_id: str, now: float) -> dict[str, Any] | None:
        record = self._records.get(task_id)
        if record is None:
            return None
        expires = self._expiry.get(task_id)
        if expires is not None and expires <= now:
            del self._records[task_id]
            del self._expiry[task_id]
            return None
        return record

    async def get(self, task_id: str) -> dict[str, Any] | None:
        """A copy of the record."""
        return self.get_blocking(task_id)

    def get_blocking(self, task_id: str) -> dict[str, Any] | None:
        """Thread-safe synchronous :meth:`get`."""
        with self._lock:
            record = self._live(task_id, self.clock.time())
            return dict(record) if record is not None else None

    async def update(
        self, task_id: str, changes: Mapping[str, Any], ttl: float | None
    ) -> dict[str, Any] | None:
        """Merge unless terminal."""
        return self.update_blocking(task_id, changes, ttl)

    def update_blocking(
        self, task_id: str, changes: Mapping[str, Any], ttl: float | None
    ) -> dict[str, Any] | None:
        """Thread-safe synchronous :meth:`update`."""
        with self._lock:
            now = self.clock.time()
            record = self._live(task_id, now)
            if record is None:
                record = {"id": task_id}
            elif is_terminal(record):
                return None
            else:
                del self._records[task_id]  # re-inserted below: newest last
            record.update(changes)
            self._records[task_id] = record
            if ttl is None:
                self._expiry.pop(task_id, None)
            else:
                self._expiry[task_id] = now + ttl
            terminal = is_terminal(record)
            waiters = self._waiters.pop(task_id, None) if terminal else None
            self._writes += 1
            if now >= self._next_sweep:
                self._sweep_locked(now)
            if self.max_entries is not None and len(self._records) > self.max_entries:
                self._evict(now)
            result = dict(record)
        if waiters is not None:
            waiters.notify_all()
        return result

    async def restart(self, task_id: str, changes: Mapping[str, Any]) -> dict[str, Any] | None:
        """A new cycle of a terminal record (under the lock, so exactly once)."""
        with self._lock:
            record = self._live(task_id, self.clock.time())
            if record is None or not is_terminal(record):
                return None
            fresh = restarted(record, changes)
            del self._records[task_id]  # re-inserted: newest last, as for an update
            self._records[task_id] = fresh
            self._expiry.pop(task_id, None)
            self._writes += 1
            return dict(fresh)

    async def create_many(
        self, items: Sequence[tuple[str, Mapping[str, Any]]], ttl: float | None
    ) -> list[bool]:
        """Write records that do not exist yet, atomically."""
        return self.create_many_blocking(items, ttl)

    def create_many_blocking(
        self, items: Sequence[tuple[str, Mapping[str, Any]]], ttl: float | None
    ) -> list[bool]:
        """Thread-safe synchronous :meth:`create_many`."""
        out = []
        with self._lock:
            now = self.clock.time()
            for task_id, record in items:
                fresh = self._live(task_id, now) is None
                if fresh:
                    self._records[task_id] = {"id": task_id, **record}
                    if ttl is not None:
                        self._expiry[task_id] = now + ttl
                out.append(fresh)
            if self.max_entries is not None and len(self._records) > self.max_entries:
                self._evict(now)
        return out

    async def sweep(self) -> int:
        """Drop every expired record and value now; returns how many."""
        with self._lock:
            return self._sweep_locked(self.clock.time())

    def _sweep_locked(self, now: float) -> int:
        self._next_sweep = now + _SWEEP_EVERY
        records = [tid for tid, expires in self._expiry.items() if expires <= now]
        for task_id in records:
            del self._expiry[task_id]
            self._records.pop(task_id, None)
        values = [
            k for k, (_, expires) in self._values.items() if expires is not None and expires <= now
        ]
        for key in values:
            del self._values[key]
        return len(records) + len(values)

    def _evict(self, now: float) -> None:
        assert self.max_entries is not None
        excess = len(self._records) - self.max_entries
        # Scan from the oldest and stop early: copying every key on each write would make a
        # full store cost O(records) per update.
        doomed: list[str] = []
        for task_id, record in self._records.items():
            if len(doomed) >= excess:
                break
            expires = self._expiry.get(task_id)
            if is_terminal(record) or (expires is not None and expires <= now):
                doomed.append(task_id)
        for task_id in doomed:
            del self._records[task_id]
            self._expiry.pop(task_id, None)

    async def delete(self, task_id: str) -> bool:
        """Forget a record."""
        with self._lock:
            self._expiry.pop(task_id, None)
            return self._records.pop(task_id, None) is not None

    async def wait(self, task_id: str, timeout: float | None) -> dict[str, Any] | None:
        """Wait for a terminal record without polling."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            with self._lock:
                record = self._live(task_id, self.clock.time())
                if is_terminal(record):
                    return dict(record) if record is not None else None
                remaining = None if deadline is None else deadline - loop.time()
                if remaining is not None and remaining <= 0:
                    return None
                fut = self._waiters.setdefault(task_id, Waiters()).register_async()
            try:
                fired = await wait_future(fut, remaining)
            except asyncio.CancelledError:
                self._discard(task_id, fut)
                raise
            if not fired:
                self._discard(task_id, fut)
                return None

    def wait_blocking(self, task_id: str, timeout: float | None) -> dict[str, Any] | None:
        """Thread-safe synchronous :meth:`wait`."""
        with self._lock:
            record = self._live(task_id, self.clock.time())
            if is_terminal(record):
                return dict(record) if record is not None else None
            event = self._waiters.setdefault(task_id, Waiters()).register_thread()
        try:
            fired = event.wait(timeout)
        except BaseException:  # Ctrl-C in the waiting thread: leave no waiter behind
            self._discard(task_id, event)
            raise
        if not fired:
            self._discard(task_id, event)
            return None
        with self._lock:
            record = self._live(task_id, self.clock.time())
            return dict(record) if is_terminal(record) and record is not None else None

    def _discard(self, task_id: str, waiter: Any) -> None:
        with self._lock:
            waiters = self._waiters.get(task_id)
            if waiters is not None:
                waiters.discard(waiter)
                if not len(waiters):  # a task nobody waits for any more leaves no entry
                    del self._waiters[task_id]

    async def set_nx(self, key: str, value: str, ttl: float | None) -> str | None:
        """Set if absent; else return the existing value."""
        with self._lock:
            now = self.clock.time()
            current = self._value(key, now)
            if current is not None:
                return str(current)
            self._values[key] = (value, None if ttl is None else now + ttl)
            if now >= self._next_sweep:
                self._sweep_locked(now)
            return None

    def _value(self, key: str, now: float) -> Any:
        entry = self._values.get(key)
        if entry is None:
            return None
        if entry[1] is not None and entry[1] <= now:
            del self._values[key]
            return None
        return entry[0]

    async def get_value(self, key: str) -> str | None:
        """The value, or None."""
        with self._lock:
            value = self._value(key, self.clock.time())
            return None if value is None else str(value)

    async def delete_value(self, key: str) -> None:
        """Delete a key."""
        with self._lock:
            self._values.pop(key, None)

    async def incr(self, key: str, amount: int = 1, ttl: float | None = None) -> int:
        """Atomic counter."""
        with self._lock:
            now = self.clock.time()
            value = int(self._value(key, now) or 0) + amount
            self._values[key] = (value, None if ttl is None else now + ttl)
            return value

    def __len__(self) -> int:
        with self._lock:
            return len(self._records)

    # -- worker heartbeats and the audit trail ---------------------------------------
    async def put_worker(self, info: dict[str, Any], *, retention: float) -> None:
        """Store a copy of ``info`` under its id until ``retention`` seconds from now."""
        with self._lock:
            now = self.clock.time()
            self._workers[str(info["id"])] = (copy.deepcopy(info), now + retention)
            for worker_id in [w for w, (_, x) in self._workers.items() if x <= now]:
                del self._workers[worker_id]

    async def remove_worker(self, worker_id: str) -> None:
        """Forget a worker's entry."""
        with self._lock:
            self._workers.pop(worker_id, None)

    async def workers(self) -> list[dict[str, Any]]:
        """Copies of the live entries, by id."""
        with self._lock:
            now = self.clock.time()
            live = sorted((w, info) for w, (info, x) in self._workers.items() if x > now)
            return [copy.deepcopy(info) for _, info in live]

    async def add_audit(self, entry: dict[str, Any], *, retention: float) -> None:
        """Append a copy of ``entry`` (the oldest of more than 10,000 are dropped)."""
        with self._lock:
            now = self.clock.time()
            while self._audit and self._audit[0][1] <= now:
                self._audit.popleft()
            self._audit.append((copy.deepcopy(entry), now + retention))

    async def audit(self, limit: int = 100) -> list[dict[str, Any]]:
        """The newest ``limit`` live entries, newest first."""
        with self._lock:
            now = self.clock.time()
            live = [entry for entry, expires in self._audit if expires > now]
        # Stable: entries with the same ``at`` keep the order they were added in.
        live.sort(key=lambda entry: float(entry.get("at") or 0.0))
        return [copy.deepcopy(entry) for entry in reversed(live[-limit:] if limit > 0 else [])]
