"""Deleting a benchmark's keys from Redis when it ends."""

from __future__ import annotations

import redis

_BATCH = 5000


def drop_keys(client: redis.Redis, *patterns: str) -> None:
    """Delete every key matching one of ``patterns`` (``SCAN``, then ``UNLINK`` in batches)."""
    for pattern in patterns:
        keys = list(client.scan_iter(match=pattern, count=_BATCH))
        for start in range(0, len(keys), _BATCH):
            client.unlink(*keys[start : start + _BATCH])
