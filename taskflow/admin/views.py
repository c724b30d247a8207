"""Operations values as JSON, offset cursors for lists, and the throughput history."""

from __future__ import annotations

import base64
import binascii
import dataclasses
import itertools
import threading
from collections import deque
from datetime import UTC, datetime
from typing import Any

from ..beat import ScheduleInfo
from .http import ApiError

__all__ = ["Throughput", "decode_offset", "encode_offset", "jsonable", "page_of", "schedule_json"]

MAX_LIMIT = 500


def jsonable(value: Any) -> Any:
    """Dataclasses, datetimes, sets and tuples as plain JSON values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [jsonable(v) for v in value]
    return value


def schedule_json(info: ScheduleInfo) -> dict[str, Any]:
    """A schedule as listed: its spec (arguments left out), source, paused, next run."""
    s = info.schedule
    return {
        "name": s.name,
        "task": s.task,
        "cron": s.cron,
        "every": s.every,
        "queue": s.queue,
        "priority": s.priority,
        "timezone": s.timezone,
        "missed": s.missed,
        "source": info.source,
        "paused": info.paused,
        "next_run": datetime.fromtimestamp(info.next_fire, tz=UTC).isoformat(),
    }


def encode_offset(offset: int) -> str:
    """An opaque cursor for offset-paged lists."""
    return base64.urlsafe_b64encode(f"o:{offset}".encode()).decode().rstrip("=")


def decode_offset(cursor: str | None) -> int:
    """The offset a cursor from :func:`encode_offset` stands for (422 otherwise)."""
    if not cursor:
        return 0
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        kind, _, number = raw.partition(":")
        offset = int(number)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise ApiError(422, f"not a cursor: {cursor[:40]!r}") from None
    if kind != "o" or offset < 0:
        raise ApiError(422, f"not a cursor: {cursor[:40]!r}")
    return offset


def page_of(items: list[Any], offset: int, limit: int) -> dict[str, Any]:
    """One page of an in-memory list with the cursor of the next."""
    window = items[offset : offset + limit]
    more = offset + limit < len(items)
    return {
        "items": [jsonable(i) for i in window],
        "next_cursor": encode_offset(offset + limit) if more else None,
    }


class Throughput:
    """Samples of the workers' counter totals, kept for an hour, as per-minute counts.

    A sample is taken whenever the service reads the cluster's stats (each page load and
    each live update), at most one per ``spacing`` seconds.
    """

    def __init__(self, window: float = 3600.0, spacing: float = 10.0) -> None:
        self.window = window
        self.spacing = spacing
        self._samples: deque[tuple[float, int, int]] = deque()
        self._lock = threading.Lock()

    def add(self, at: float, totals: dict[str, int]) -> None:
        """Record the totals (``succeeded``, ``failed``) seen at ``at``."""
        sample = (at, int(totals.get("succeeded", 0)), int(totals.get("failed", 0)))
        with self._lock:
            if self._samples and at - self._samples[-1][0] < self.spacing:
                return
            self._samples.append(sample)
            while self._samples and self._samples[0][0] < at - self.window:
                self._samples.popleft()

    def minutes(self, now: float, count: int = 60) -> list[tuple[float, int, int]]:
        """``count`` one-minute buckets ending at ``now``: (start, succeeded, failed) done
        in each, from the growth between consecutive samples (a counter that went down, a
        restarted worker, counts as growth from zero)."""
        start = now - count * 60.0
        buckets = [[start + i * 60.0, 0, 0] for i in range(count)]
        with self._lock:
            samples = list(self._samples)
        for (_, ok0, bad0), (t1, ok1, bad1) in itertools.pairwise(samples):
            index = int((t1 - start) // 60)
            if 0 <= index < count:
                buckets[index][1] += ok1 - ok0 if ok1 >= ok0 else ok1
                buckets[index][2] += bad1 - bad0 if bad1 >= bad0 else bad1
        return [(b[0], int(b[1]), int(b[2])) for b in buckets]
