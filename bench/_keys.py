"""Deleting a benchmark's keys (Redis) or streams and buckets (NATS) when it ends."""

from __future__ import annotations

import asyncio
import contextlib

import redis

from taskflow._nats.names import stream_name

_BATCH = 5000


def drop_keys(client: redis.Redis, *patterns: str) -> None:
    """Delete every key matching one of ``patterns`` (``SCAN``, then ``UNLINK`` in batches)."""
    for pattern in patterns:
        keys = list(client.scan_iter(match=pattern, count=_BATCH))
        for start in range(0, len(keys), _BATCH):
            client.unlink(*keys[start : start + _BATCH])


def drop_prefix(url: str, prefix: str) -> None:
    """Delete what an app with ``prefix`` kept on the Redis or NATS server of ``url``
    (any other URL: nothing)."""
    server = url.split("?", 1)[0]
    if url.startswith("redis"):
        client = redis.Redis.from_url(server)
        try:
            drop_keys(client, f"{{{prefix}}}:*", f"{prefix}:*")
        finally:
            client.close()
    elif url.startswith("nats"):
        asyncio.run(_drop_streams(server, prefix))


async def _drop_streams(server: str, prefix: str) -> None:
    import nats

    nc = await nats.connect(server, connect_timeout=2)
    try:
        js = nc.jetstream()
        token = stream_name(prefix)
        names = [f"TF_{token}_{n}" for n in ("WORK", "DELAY", "DLQ")]
        names += [f"KV_TF_{token}_{n}" for n in ("STATE", "RESULTS")]
        for name in names:
            with contextlib.suppress(Exception):
                await js.delete_stream(name)
    finally:
        await nc.close()
