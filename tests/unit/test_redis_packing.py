"""Commands to Redis are packed in C, byte for byte as redis-py packs them, and anything the
fast packer does not take still goes out (or fails) as redis-py would have it."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from redis.asyncio.connection import Connection
from redis.exceptions import DataError

from taskflow._redis.connection import redis_client

URL = "redis://127.0.0.1:6379/15"


def _packers() -> tuple[Connection, Connection]:
    client = redis_client(URL, 1.0, None)
    fast = client.connection_pool.make_connection()
    return fast, Connection()


def _joined(chunks: list[bytes]) -> bytes:
    return b"".join(bytes(c) for c in chunks)


def test_the_pool_packs_in_c_the_same_bytes_as_redis_py() -> None:
    fast, plain = _packers()
    assert type(fast).__name__.startswith("CPacking")
    settle = ["tf", "1764600000.125", "30.0", 12]
    for _ in range(12):
        settle += ["ack", str(uuid.uuid4()), "token", "", "", ""]
    commands = [
        ("EVALSHA", "a" * 40, 0, *settle),
        ("SET", "k", b"\x00\xffbinary", "PX", 1000),
        ("HSET", "h", "field", "ünïcode", "n", -3, "f", 2.5, "big", 1e20),
        ("SET", "mv", memoryview(b"view")),
        ("SET", "big", b"x" * 100_000),
    ]
    for command in commands:
        assert _joined(fast.pack_command(*command)) == _joined(plain.pack_command(*command))


def test_what_the_c_packer_does_not_take_goes_through_redis_py() -> None:
    fast, plain = _packers()
    # A command name with a space is split into words, as redis-py does.
    assert _joined(fast.pack_command("CONFIG GET", "maxmemory")) == _joined(
        plain.pack_command("CONFIG GET", "maxmemory")
    )
    # Values redis-py refuses are refused with its error, not packed.
    with pytest.raises(DataError):
        fast.pack_command("SET", "k", True)
    with pytest.raises(DataError):
        fast.pack_command("SET", "k", None)


def test_a_batch_round_trips_through_a_real_server() -> None:
    async def main() -> None:
        client = redis_client(URL, 1.0, None)
        key = f"taskflow-test-packing-{uuid.uuid4().hex}"
        values = [f"v{i}-ü" for i in range(200)]
        try:
            await client.rpush(key, *values)
            assert [v.decode() for v in await client.lrange(key, 0, -1)] == values
        finally:
            await client.delete(key)
            await client.aclose()

    asyncio.run(main())


def test_the_synchronous_delay_path_packs_the_same_bytes_as_redis_py() -> None:
    # delay()'s path calls hiredis directly (taskflow._redis.sync); what hiredis refuses
    # goes through redis-py's synchronous packer, with its error.
    from redis import connection as sync_connection

    from taskflow._redis.sync import _packed

    conn = sync_connection.Connection()
    publish = ("EVALSHA", "a" * 40, 0, "{tf}", "1764600000.125", 1, "id", "default")
    for command in (
        (*publish, b"\x00\xffbody", 0, "", 3),
        ("HSET", "h", "field", "ünïcode", "n", -3, "f", 2.5),
    ):
        assert _joined(_packed(conn, command)) == _joined(conn.pack_command(*command))
    with pytest.raises(DataError):
        _packed(conn, ("SET", "k", None))
