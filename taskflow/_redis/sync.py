"""One Lua script on a synchronous, thread-safe connection pool.

``delay()`` from a plain thread publishes through this instead of hopping onto the app's
event loop (a cross-thread hop costs more than the Redis round trip itself).

A call takes one of the connections kept for it (up to 16, taken from the pool as calls
overlap) and sends ``EVALSHA`` on it directly: the client's pool checkout and return cost
about as much CPU time as the round trip itself. A call while all 16 are busy, the script
not loaded on the server, a connection error, or another process after a fork: the call
goes through the client's own path instead, with its retries (as before; an error the
script itself raises is raised as is).
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from redis import BlockingConnectionPool, Redis
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from .connection import SEND_TIMEOUT
from .kept import RECONNECT, Kept, hiredis_packed
from .scripts import load_script

__all__ = ["SyncScript"]

_KEEP = 16
"""Most connections of the pool (of 64) that calls keep for the direct path: one per thread
calling at the same time."""

_BACKSTOP = SEND_TIMEOUT
"""The pool's socket timeout: bounds what cannot be given a timeout per call -- a new
connection's handshake and the client's own path (a call while every kept connection is
busy, or after a connection error), where a batch the server needs longer for than this
would be given up. The direct path reads within it too, or within the caller's bound
where that is longer (a large batch)."""


def _packed(conn: Any, command: tuple[Any, ...]) -> list[bytes]:
    """``command`` packed by hiredis directly (:func:`~.kept.hiredis_packed`): the
    client's synchronous packer walks the arguments in Python first."""
    packed = hiredis_packed(conn.encoder, command)
    if packed is None:
        packed = conn.pack_command(*command)
    return packed


class SyncScript:
    """The script ``name`` on its own synchronous pool, opened on the first call.

    Calls raise the client's errors (``RedisError``, ``OSError``); the caller maps them.
    The pool rides out a short outage like the asyncio one, and blocks (up to
    ``connect_timeout``) for a free connection.
    """

    def __init__(
        self,
        url: str,
        connect_timeout: float,
        name: str,
        options: Mapping[str, Any] | None = None,
    ) -> None:
        """Nothing connects until the first call. ``options``: TLS and credential
        arguments for the pool (``Connection.client_options``)."""
        self._url = url
        self._options = dict(options or {})
        self._timeout = connect_timeout
        self._name = name
        self._lock = threading.Lock()
        self._client: Redis | None = None
        self._script: Any = None
        self._kept: Kept[Any] = Kept(_KEEP)
        self._pid = os.getpid()
        self._socket_timeout = _BACKSTOP  # the pool's, set as it opens

    def __call__(self, args: Sequence[Any], timeout: float | None = None) -> Any:
        """Run the script with ``args`` (its ARGV); thread-safe. See :meth:`send`."""
        return self.send(args, timeout)()

    def send(self, args: Sequence[Any], timeout: float | None = None) -> Callable[[], Any]:
        """Send the script with ``args`` now; the call returned reads its reply (or raises
        its error) and must be made, once. In between, the caller may send on another
        connection: two scripts then cost one round trip of latency instead of two.

        ``timeout``: seconds the reply may take; past them the read raises the client's
        ``TimeoutError`` (not retried: the script may have run). Where the direct path is
        not taken, the script runs here, each read within the pool's ``_BACKSTOP``, and
        the call returned hands back its reply."""
        script = self._script or self._open()
        conn = self._kept.idle()
        if conn is None:
            conn = self._take()
        if conn is None or self._pid != os.getpid():
            # No kept connection free, or a forked child (the client's pool reconnects).
            reply = script(args=args)
            return lambda: reply
        try:
            conn.send_packed_command(_packed(conn, ("EVALSHA", script.sha, 0, *args)))
        except RECONNECT:
            # The client's call retries these, as it would have done on its own.
            self._drop(conn)
            reply = script(args=args)
            return lambda: reply
        except BaseException:
            self._drop(conn)
            raise
        return lambda: self._read(conn, script, args, timeout)

    def _read(self, conn: Any, script: Any, args: Sequence[Any], timeout: float | None) -> Any:
        kept = self._kept
        try:
            if timeout is None or timeout <= self._socket_timeout:
                reply = conn.read_response()  # the socket's own timeout: no change to make
            else:
                reply = conn.read_response(timeout=timeout)
        except RedisTimeoutError:  # no reply: the script may have run, so it is not sent again
            self._drop(conn)
            raise
        except NoScriptError:  # a restarted server: the client's call loads it again
            kept.give_back(conn)
            return script(args=args)
        except ResponseError:  # the script's own error: the connection is fine
            kept.give_back(conn)
            raise
        except RECONNECT:
            self._drop(conn)
            return script(args=args)
        except BaseException:
            # A reply that was never read leaves the connection unusable.
            self._drop(conn)
            raise
        kept.give_back(conn)
        return reply

    def _take(self) -> Any:
        """A connection of the pool kept for the direct path, or None: at most
        :data:`_KEEP` are kept, so the client's own calls always find the rest."""
        client = self._client
        if client is None or self._pid != os.getpid() or not self._kept.reserve():
            return None
        try:
            return client.connection_pool.get_connection()
        except RedisTimeoutError:  # a server that does not answer: no other path will do
            self._kept.forget()
            raise
        except Exception:
            self._kept.forget()
            return None

    def _drop(self, conn: Any) -> None:
        self._kept.forget()
        self._drop_from(self._client, conn)

    @staticmethod
    def _drop_from(client: Redis | None, conn: Any) -> None:
        with contextlib.suppress(Exception):
            conn.disconnect()
            if client is not None:
                client.connection_pool.release(conn)

    def _open(self) -> Any:
        with self._lock:
            if self._script is None:
                self._socket_timeout = _BACKSTOP
                pool = BlockingConnectionPool.from_url(
                    self._url,
                    **self._options,
                    max_connections=64,
                    timeout=self._timeout,
                    socket_connect_timeout=self._timeout,
                    socket_timeout=self._socket_timeout,
                    # Connection errors (a restart) are retried; a reply that does not
                    # come is not: the script may have run.
                    retry=Retry(
                        ExponentialBackoff(cap=1.0, base=0.05),
                        6,
                        supported_errors=(RedisConnectionError,),
                    ),
                    socket_keepalive=True,
                )
                self._client = Redis.from_pool(pool)
                self._script = self._client.register_script(load_script(self._name))
            return self._script

    def close(self) -> None:
        """Close the pool (the next call opens a new one). Idempotent."""
        with self._lock:
            client, self._client, self._script = self._client, None, None
        for conn in self._kept.reset():
            self._drop_from(client, conn)
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()
