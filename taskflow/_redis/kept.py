"""Connections of a pool kept aside for a direct ``EVALSHA`` path.

Both script paths -- the synchronous one of ``delay()`` (:class:`~.sync.SyncScript`) and the
asyncio one of the engines (:meth:`~.connection.Connection.run`) -- send ``EVALSHA`` on a
connection of their pool directly, because the client's own call (pool checkout and return,
retry wrapper, hooks) costs more CPU time than the round trip. :class:`Kept` is what the two
share: which connections are kept and free, and how many are kept, within a limit that
leaves the rest of the pool to the client's own calls. :data:`RECONNECT` names the errors
after which a direct call drops its connection and goes through the client's call instead,
which retries them. :func:`hiredis_packed` is how both pack a command. :class:`PoolKept`
adds what the asyncio paths (the script calls, and the wait of an idle fetch with the
fetch behind it) share: taking a connection from a pool that may have been closed and
opened again meanwhile, and dropping one.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

__all__ = ["RECONNECT", "Kept", "PoolKept", "hiredis_packed"]

RECONNECT = (RedisConnectionError, RedisTimeoutError, OSError)

C = TypeVar("C")

_pack: Callable[[tuple[Any, ...]], bytes] | None
try:
    from hiredis import pack_command as _pack
except ImportError:  # pragma: no cover - hiredis is a dependency of the redis extra
    _pack = None


def hiredis_packed(encoder: Any, command: tuple[Any, ...]) -> list[bytes] | None:
    """``command`` packed by hiredis (C), for a connection with ``encoder``; None where
    redis-py's packer must do it: hiredis not installed, an encoder other than strict
    UTF-8 (hiredis encodes text so), a command name with a space (redis-py splits it), or
    an argument hiredis refuses (None, True, text it cannot encode), for which redis-py's
    packer raises its own error.

    redis-py's asyncio packer joins the growing buffer once per argument (its cost grows
    with the square of the argument count: about 40 µs for a settle batch of twelve), and
    its synchronous one walks the arguments in Python before calling hiredis
    (``python -m bench.redis_pack``)."""
    first = command[0] if command else None
    if (
        _pack is None
        or not isinstance(first, str)
        or " " in first
        or encoder.encoding != "utf-8"
        or encoder.encoding_errors != "strict"
    ):
        return None
    with contextlib.suppress(TypeError, ValueError):
        return [_pack(command)]
    return None


class Kept(Generic[C]):
    """At most ``limit`` connections kept for a direct path; safe to use from threads."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._idle: list[C] = []
        self._count = 0
        self._lock = threading.Lock()

    def idle(self) -> C | None:
        """A kept connection nobody uses now, or None (``list.pop`` is atomic: each goes
        to one caller)."""
        try:
            return self._idle.pop()
        except IndexError:
            return None

    def give_back(self, conn: C) -> None:
        """``conn`` is free again, still kept."""
        self._idle.append(conn)

    def reserve(self) -> bool:
        """Count one more kept connection if the limit allows (then take it from the pool,
        and :meth:`forget` it if that fails)."""
        with self._lock:
            if self._count >= self.limit:
                return False
            self._count += 1
            return True

    def forget(self) -> None:
        """One kept connection fewer: dropped, or never taken after :meth:`reserve`."""
        with self._lock:
            self._count = max(0, self._count - 1)  # 0 already after a reset

    def reset(self) -> list[C]:
        """Keep nothing (the pool they came from is closing); return the idle ones, for the
        caller to disconnect."""
        with self._lock:
            idle, self._idle, self._count = self._idle, [], 0
        return idle


class PoolKept(Kept[AbstractConnection]):
    """:class:`Kept` connections of an asyncio client's pool, for an owner that may close
    its client and open another (``current`` returns the owner's client now)."""

    def __init__(self, limit: int, current: Callable[[], Any]) -> None:
        super().__init__(limit)
        self._current = current

    async def take(self, client: Any) -> AbstractConnection | None:
        """A connection of ``client``'s pool kept for the direct path, or None: at most
        ``limit`` are kept, so the client's own calls always find the rest."""
        if not self.reserve():
            return None
        try:
            pool: Any = client.connection_pool  # redis-py leaves get_connection untyped
            conn: AbstractConnection = await pool.get_connection()
        except Exception:
            if client is self._current():
                self.forget()
            return None  # the client's own call meets the error, with its retries
        if client is not self._current():  # closed (and maybe opened again) meanwhile
            await self.drop(client, conn)
            return None
        return conn

    def release(self, client: Any, conn: AbstractConnection) -> bool:
        """``conn``, taken from ``client``'s pool, is free again: kept for the next call,
        unless the owner closed that client meanwhile; False then, and the caller
        :meth:`drop` s it (back to its pool), so that a reopened owner never gets it."""
        if client is not self._current():
            return False
        self.give_back(conn)
        return True

    async def drop(self, client: Any, conn: AbstractConnection) -> None:
        """Disconnect ``conn`` (a reply may be in flight on it) and give it back to
        ``client``'s pool, kept no more."""
        if client is self._current():
            self.forget()
        with contextlib.suppress(Exception):
            await conn.disconnect()
            await client.connection_pool.release(conn)
