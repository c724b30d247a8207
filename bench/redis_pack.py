"""CPU time to pack one Redis command: taskflow's pools (hiredis) against redis-py's asyncio
packer, for a settle batch of twelve (76 arguments) and a fetch (9 arguments); and the
synchronous path of ``delay()`` (hiredis called directly) against redis-py's synchronous
packer, for a publish of one message (12 arguments).

    python -m bench.redis_pack

No server is needed: only the packing is timed (best of 5 rounds of 20,000 each).
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from redis import connection as sync_connection
from redis.asyncio.connection import Connection

from taskflow._redis import sync
from taskflow._redis.connection import redis_client

ROUNDS = 5
CALLS = 20_000


def _commands() -> list[tuple[str, tuple[Any, ...]]]:
    settle: list[Any] = ["{tf}", "1764600000.125", "30.0", 12]
    for _ in range(12):
        settle += ["ack", str(uuid.uuid4()), "token", "", "", ""]
    fetch = ["{tf}", "server", "30.0", 12, 1, "default"]
    return [
        ("settle of 12 (76 arguments)", ("EVALSHA", "a" * 40, 0, *settle)),
        ("fetch (9 arguments)", ("EVALSHA", "a" * 40, 0, *fetch)),
    ]


def _best(conn: Any, command: tuple[Any, ...]) -> float:
    """Microseconds of CPU per pack, best of :data:`ROUNDS`."""
    return _best_of(lambda: conn.pack_command(*command))


def _best_of(pack: Any) -> float:
    best = float("inf")
    for _ in range(ROUNDS):
        started = time.process_time()
        for _ in range(CALLS):
            pack()
        best = min(best, time.process_time() - started)
    return best / CALLS * 1e6


def main() -> None:
    ours = redis_client("redis://127.0.0.1:6379/0", 1.0, None).connection_pool.make_connection()
    plain = Connection()
    print(f"{'':32}{'taskflow pool':>16}{'redis-py asyncio':>18}")
    for name, command in _commands():
        print(f"{name:32}{_best(ours, command):>13.2f} us{_best(plain, command):>15.2f} us")
    body = b"x" * 120
    publish = ("{tf}", "1764600000.125", 1, str(uuid.uuid4()), "default", body, 0, "", 3)
    command = ("EVALSHA", "a" * 40, 0, *publish)
    blocking = sync_connection.Connection()
    print(f"{'':32}{'delay() path':>16}{'redis-py sync':>18}")
    direct = _best_of(lambda: sync._packed(blocking, command))  # noqa: SLF001
    print(
        f"{'publish of one (12 arguments)':32}{direct:>13.2f} us"
        f"{_best(blocking, command):>15.2f} us"
    )


if __name__ == "__main__":
    main()
