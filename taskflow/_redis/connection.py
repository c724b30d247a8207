"""One app's namespace on one Redis server, shared by the broker and the result store.

:class:`Connection` checks the URL and the key prefix, names keys, opens the asyncio pool,
registers the Lua scripts and maps client errors to :class:`~taskflow.errors.BrokerError`
naming the masked URL (never a bare client traceback). The broker and the result store
each own one; neither reaches into the other.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import redis.asyncio as aioredis
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.exceptions import NoScriptError, RedisError, ResponseError

from .._tls import Security, explain, resolve, url_with
from .._waiters import within
from ..errors import BrokerError, ConfigError
from ..urls import mask_url, parse_url
from .kept import RECONNECT, PoolKept, hiredis_packed
from .scripts import load_script

__all__ = [
    "Connection",
    "RecordKeys",
    "broker_error",
    "check_prefix",
    "client_options",
    "open_client",
    "redis_client",
]

_NO_OPTIONS: Mapping[str, Any] = {}

log = logging.getLogger("taskflow.redis")

_CHECKED: set[str] = set()
"""The servers (client URLs) whose eviction policy this process has looked at."""

SEND_TIMEOUT: Final = 10.0
"""Seconds a send (a publish, the records created with it) waits for the server's reply,
plus what its size needs (:func:`send_timeout`). A server that stopped answering makes the
send raise BrokerError instead of hanging the caller; what was sent may or may not be
there (:func:`no_reply`)."""

CALL_TIMEOUT: Final = 10.0
"""Seconds a single command or pipeline (a record read, a heartbeat, an operator's
look at a queue), or a script off the worker's path (an operator's action, a batch of
record writes: :meth:`Connection.ask`), waits for its reply before it raises
BrokerError. Scripts that settle or fetch are not bounded by it: the worker bounds those
itself (leases, stall checks)."""

_SEND_PER_ITEM = 1e-4  # seconds a send may take per message (or record) beyond SEND_TIMEOUT
_SEND_PER_BYTE = 1e-7  # and per byte of the bodies: a floor of 10 MB/s


def send_timeout(items: int, size: int = 0) -> float:
    """How long a send of ``items`` messages or records of ``size`` bytes in all may wait
    for its reply: ``SEND_TIMEOUT`` plus 0.1 ms an item and 0.1 s a megabyte, so that a
    large batch is never given up while the server works through it."""
    return SEND_TIMEOUT + items * _SEND_PER_ITEM + size * _SEND_PER_BYTE


def no_reply(masked: str, timeout: float, what: str) -> BrokerError:
    """The BrokerError of a send the server did not answer within ``timeout`` seconds."""
    return BrokerError(
        f"redis at {masked}: no reply within {timeout:.0f}s; {what} may or may not have "
        "been written (the server stopped answering, or the send was too large for its "
        "bound)"
    )


_KEEP = 8
"""Most connections of a pool (of 64) that :meth:`Connection.run` keeps for its direct
path: as many as its calls overlap (a worker's fetch, settles and record updates)."""


class _CPacking:
    """Packs commands with hiredis (C) instead of redis-py's asyncio packer
    (:func:`~.kept.hiredis_packed`); anything hiredis does not take goes through
    redis-py's packer as before, with its errors."""

    encoder: Any

    def pack_command(self, *args: Any) -> list[bytes]:
        packed = hiredis_packed(self.encoder, args)
        if packed is None:
            packed = super().pack_command(*args)  # type: ignore[misc]
        return packed


_PACKED: dict[type[AbstractConnection], type[AbstractConnection]] = {}


def _c_packing(cls: type[AbstractConnection]) -> type[AbstractConnection]:
    """``cls`` (TCP, TLS or Unix socket connection) with :class:`_CPacking`."""
    fast = _PACKED.get(cls)
    if fast is None:
        fast = _PACKED[cls] = type(f"CPacking{cls.__name__}", (_CPacking, cls), {})
    return fast


def check_prefix(prefix: str, where: str) -> str:
    """A key prefix: non-empty, without braces (they would break the hash tag)."""
    if not isinstance(prefix, str) or not prefix or "{" in prefix or "}" in prefix:
        raise ConfigError(f"{where}: prefix must be a non-empty string without braces")
    return prefix


def broker_error(masked: str, exc: BaseException, *, without_cert: bool = False) -> BrokerError:
    """A BrokerError naming the (masked) URL, never a bare client traceback.

    ``without_cert``: the connection uses TLS without a client certificate, so a server
    that drops it right away most likely requires one (with TLS 1.3 the server checks
    the client's certificate after the handshake and just closes the connection).
    """
    what = "timed out" if isinstance(exc, TimeoutError) else str(exc) or type(exc).__name__
    what = explain(_PIPELINE_NOTE.sub(_command_only, what), without_cert=without_cert)
    return BrokerError(f"redis at {masked}: {what}")


# redis-py's note on a pipelined command's error, which quotes up to 100 characters of the
# command: its arguments may be a task's, and an error message never shows them.
_PIPELINE_NOTE = re.compile(r"Command # (\d+) \((\S*).*?\) of pipeline caused error: ", re.S)


def _command_only(match: re.Match[str]) -> str:
    return f"command {match.group(2)} (#{match.group(1)} of a pipeline) failed: "


def client_options(security: Security) -> dict[str, Any]:
    """The redis-py connection arguments for ``security`` (TLS files, AUTH secret)."""
    options: dict[str, Any] = {}
    if security.secret is not None:
        options["password"] = security.secret
    if security.tls:
        options.update(
            ssl_ca_certs=security.ca_file,
            ssl_certfile=security.cert_file,
            ssl_keyfile=security.key_file,
            ssl_cert_reqs="required" if security.verify else "none",
            ssl_check_hostname=security.verify,
            ssl_min_version=security.min_version,
        )
    return options


def redis_client(
    url: str,
    connect_timeout: float,
    socket_timeout: float | None,
    max_connections: int = 64,
    options: Mapping[str, Any] = _NO_OPTIONS,
) -> aioredis.Redis:
    """An asyncio client that rides out a short outage (a server restart, a failover).

    A command on a broken connection is retried on a fresh one with backoff for about
    2.5 s in all, so a settle or a result write made while the server restarts still lands
    before the lease runs out; a server that stays down then fails with an error.
    Repeating a script is safe: publish replaces by id, settles are fenced by tokens,
    result updates are merges.
    The pool blocks (up to ``connect_timeout``) for a free connection instead of failing,
    so a burst of concurrent calls queues up rather than erroring.
    ``options``: TLS and credential arguments (:func:`client_options`).
    """
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        **options,
        max_connections=max_connections,
        timeout=connect_timeout,
        socket_connect_timeout=connect_timeout,
        socket_timeout=socket_timeout,
        retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), 6),
        socket_keepalive=True,
    )
    pool.connection_class = _c_packing(pool.connection_class)
    return aioredis.Redis.from_pool(pool)


async def open_client(
    url: str, connect_timeout: float, masked: str, options: Mapping[str, Any] = _NO_OPTIONS
) -> aioredis.Redis:
    """A connected :func:`redis_client`: the server answered a PING within the timeout,
    or :class:`BrokerError` naming ``masked``.

    The client retries a failed connect until the timeout; when it timed out, one more
    attempt without retries names the cause (a refused TLS handshake, a wrong password)
    instead of a bare timeout.
    """
    client = redis_client(url, connect_timeout, None, options=options)
    try:
        await within(client.ping(), connect_timeout)
    except (RedisError, OSError, TimeoutError) as exc:
        await client.aclose()
        cause = (
            await _cause(url, connect_timeout, options) if isinstance(exc, TimeoutError) else None
        )
        without_cert = "ssl_cert_reqs" in options and not options.get("ssl_certfile")
        raise broker_error(masked, cause or exc, without_cert=without_cert) from None
    return client


async def _cause(url: str, timeout: float, options: Mapping[str, Any]) -> BaseException | None:
    """Why a single connect to ``url`` fails (None: it times out or succeeds)."""
    probe = aioredis.Redis.from_url(
        url,
        socket_connect_timeout=timeout,
        socket_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
        **options,
    )
    try:
        await within(probe.ping(), timeout)
    except (RedisError, OSError) as exc:
        return exc
    except TimeoutError:
        return None
    finally:
        with contextlib.suppress(Exception):
            await probe.aclose()
    return None


@dataclass(frozen=True)
class RecordKeys:
    """Where a Redis result store keeps task records: its server (client URL) and the key
    prefix of a record (``{prefix}:r:``), for a broker that marks them running; how the
    store encodes an update (``record_merge.lua``'s arguments), for a broker that writes
    records with its settles; and how it encodes the creation of records without a time
    to live (``record_create.lua``'s), for a broker that creates the queued records with
    its messages."""

    client_url: str
    prefix: str
    update_args: Callable[[str, Mapping[str, Any], float | None], list[Any]] = field(compare=False)
    create_args: Callable[[Sequence[tuple[str, Mapping[str, Any]]]], list[Any]] = field(
        compare=False
    )


class Connection:
    """A Redis URL and key prefix, the pool opened for them and the registered scripts.

    Keys are ``{prefix}:a:b`` (:meth:`key`): the braces are a hash tag, so one app's keys
    share a Redis Cluster slot. ``owner`` names the class in URL errors. ``security``: the
    TLS and credential options given as keyword arguments (see :mod:`taskflow._tls`); the
    URL's query options of the same names apply where a keyword argument is None.
    """

    def __init__(
        self,
        url: str,
        *,
        role: Literal["broker", "results"],
        owner: str,
        prefix: str,
        connect_timeout: float,
        security: Mapping[str, Any] = _NO_OPTIONS,
    ) -> None:
        """Check ``url``, ``prefix``, ``connect_timeout`` and the TLS and credential
        options (building the TLS context once); nothing connects yet."""
        parsed = parse_url(url, role)
        if parsed.scheme not in ("redis", "rediss"):
            raise ConfigError(f"{owner} needs a redis:// or rediss:// URL, got {parsed.masked!r}")
        if not connect_timeout > 0:
            raise ConfigError(f"{parsed.masked}: connect_timeout must be positive")
        self.url = url_with(url, security)
        """``url`` with the options given as keyword arguments added to its query (a
        result store derived from it connects the same way)."""
        self.masked = mask_url(self.url)
        self.security = resolve(
            self.masked,
            role=role,
            scheme_tls=parsed.scheme == "rediss",
            url_password=parsed.password is not None,
            given=security,
            query=parsed.options,
        )
        """The checked TLS and credential settings."""
        client_url = parsed.without_query()
        if self.security.tls and parsed.scheme == "redis":
            client_url = "rediss" + client_url[len("redis") :]
        self.client_url = client_url
        """The URL for client libraries (no query string; ``rediss://`` when TLS is on)."""
        self.client_options = client_options(self.security)
        """The TLS and credential arguments every pool of this connection passes."""
        self.prefix = check_prefix(prefix, parsed.masked)
        self.tag = "{" + self.prefix + "}"
        """The key prefix with its hash-tag braces: what the broker's scripts take."""
        self.connect_timeout = float(connect_timeout)
        self._what = "broker" if role == "broker" else "result store"
        self._client: aioredis.Redis | None = None
        self._scripts: dict[str, Any] = {}
        self._kept = PoolKept(_KEEP, lambda: self._client)  # for run's direct path

    def key(self, *parts: str) -> str:
        """A key in this namespace (``{prefix}:a:b``)."""
        return ":".join((self.tag, *parts))

    @property
    def connected(self) -> bool:
        """True between :meth:`connect` and :meth:`close`."""
        return self._client is not None

    def client(self) -> aioredis.Redis:
        """The connected client; BrokerError before :meth:`connect` and after :meth:`close`."""
        if self._client is None:
            raise BrokerError(f"redis {self._what} {self.masked} is not connected (call connect())")
        return self._client

    async def connect(self, scripts: Sequence[str]) -> None:
        """Open the pool, check the server answers within the timeout, register
        ``scripts`` (by name, see :mod:`taskflow._redis.scripts`). Idempotent."""
        if self._client is not None:
            return
        client = await open_client(
            self.client_url, self.connect_timeout, self.masked, self.client_options
        )
        self._client = client
        self._scripts = {name: client.register_script(load_script(name)) for name in scripts}
        if self.client_url not in _CHECKED:
            _CHECKED.add(self.client_url)
            await self._check_eviction(client)

    async def _check_eviction(self, client: aioredis.Redis) -> None:
        """Warn if the server may delete keys when it is full (``maxmemory-policy`` other
        than ``noeviction``): it would drop queued tasks, their records or idempotency
        keys, and nobody would be told. With ``noeviction`` a full server refuses writes
        instead, and a send raises BrokerError. Once per server and process; a server that
        does not let clients read its configuration (``CONFIG`` renamed or denied, as on
        some managed services) is noted at INFO level."""
        try:
            reply = await within(client.config_get("maxmemory*"), self.connect_timeout)
        except (RedisError, OSError, TimeoutError) as exc:
            reason = "timed out" if isinstance(exc, TimeoutError) else str(exc)
            log.info(
                "redis %s at %s: could not read the server's maxmemory-policy (%s); it must "
                "be noeviction, or a full server deletes queued tasks",
                self._what,
                self.masked,
                reason or type(exc).__name__,
            )
            return
        # redis-py answers CONFIG GET with text (it decodes this reply whatever the
        # client's decode_responses).
        policy = reply.get("maxmemory-policy", "noeviction")
        if policy == "noeviction":
            return
        limit = reply.get("maxmemory", "0")
        when = (
            "once it holds maxmemory (no limit is set now, but one can be set at any time)"
            if limit == "0"
            else f"once it holds maxmemory ({limit} bytes)"
        )
        log.warning(
            "redis %s at %s: the server's maxmemory-policy is %s: %s it deletes keys to make "
            "room, and queued tasks, their records and idempotency keys would vanish "
            "without an error; set maxmemory-policy to "
            "noeviction (a full server then refuses new tasks with an error instead)",
            self._what,
            self.masked,
            policy,
            when,
        )

    async def close(self) -> None:
        """Close the pool. Idempotent."""
        client, self._client = self._client, None
        self._kept.reset()  # closed with the pool
        if client is not None:
            with contextlib.suppress(Exception):
                await client.aclose()

    def error(self, exc: BaseException) -> BrokerError:
        """``exc`` as a BrokerError naming this connection's (masked) URL."""
        return broker_error(self.masked, exc)

    async def call(self, awaitable: Awaitable[Any]) -> Any:
        """Await a client call (a command or a pipeline, never a blocking one); client
        errors become BrokerError, and so does a call the server does not answer within
        ``CALL_TIMEOUT`` seconds."""
        try:
            return await within(awaitable, CALL_TIMEOUT)
        except TimeoutError:
            raise self.no_answer() from None
        except (RedisError, OSError) as exc:
            raise self.error(exc) from None

    def no_answer(self) -> BrokerError:
        """The BrokerError of a call not answered within ``CALL_TIMEOUT`` seconds."""
        return BrokerError(
            f"redis at {self.masked}: no reply within {CALL_TIMEOUT:.0f}s (the server "
            "stopped answering)"
        )

    async def run(self, script: str, args: Sequence[Any]) -> Any:
        """Run a registered script with ``args`` (its ARGV).

        The call takes one of the connections kept for this path and sends ``EVALSHA``
        on it directly: the client's pool checkout and return, retry wrapper and hooks
        cost more CPU time than the send and the read themselves, on the path of every
        fetch, settle and record update. All kept connections busy, the script
        not loaded on the server, or a connection error: the call goes through the
        client's own path, with its retries, as before (repeating a script is safe, see
        :func:`redis_client`); an error the script raises is raised as before.
        """
        client = self.client()
        registered = self._scripts[script]
        conn = self._kept.idle()
        if conn is None:
            conn = await self._kept.take(client)
        if conn is None:
            return await self._run_client(registered, args)
        try:
            await conn.send_command("EVALSHA", registered.sha, 0, *args)
            reply = await conn.read_response()
        except NoScriptError:  # a restarted server: the client's call loads it again
            if not self._kept.release(client, conn):
                await self._kept.drop(client, conn)
            return await self._run_client(registered, args)
        except ResponseError as exc:  # the script's own error: the connection is fine
            if not self._kept.release(client, conn):
                await self._kept.drop(client, conn)
            raise self.error(exc) from None
        except RECONNECT:
            await self._kept.drop(client, conn)
            return await self._run_client(registered, args)
        except BaseException:
            # Cancelled with a reply in flight: the client disconnected it, and it goes
            # back to the pool (which connects it again on its next use).
            await self._kept.drop(client, conn)
            raise
        if not self._kept.release(client, conn):
            await self._kept.drop(client, conn)
        return reply

    async def _run_client(self, registered: Any, args: Sequence[Any]) -> Any:
        try:
            return await registered(args=args)
        except (RedisError, OSError) as exc:
            raise self.error(exc) from None

    async def ask(self, script: str, args: Sequence[Any]) -> Any:
        """:meth:`run` bounded like :meth:`call`: for a script off the worker's path (an
        operator's action, a batch of record writes), which must not wait for good on a
        server that stopped answering. Past ``CALL_TIMEOUT`` the script may or may not have
        run; the BrokerError says the server stopped answering."""
        return await self.call(self.run(script, args))

    async def send(
        self, script: str, args: Sequence[Any], what: str, items: int, size: int = 0
    ) -> Any:
        """:meth:`run` for a send of ``items`` messages or records (``size`` bytes of
        bodies): bounded by :func:`send_timeout`, past which :func:`no_reply` says
        ``what`` may or may not have been written."""
        timeout = send_timeout(items, size)
        try:
            return await within(self.run(script, args), timeout)
        except TimeoutError:
            raise no_reply(self.masked, timeout, what) from None

    def sha(self, script: str) -> str:
        """The SHA1 of a registered script (for ``EVALSHA`` in a pipeline of one's own)."""
        sha: str = self._scripts[script].sha
        return sha

    async def run_many(self, script: str, calls: Sequence[Sequence[Any]]) -> list[Any]:
        """Run a registered script once per ``calls`` entry, in one pipelined round trip
        (each call still atomic); the replies in order."""
        if len(calls) == 1:
            return [await self.run(script, calls[0])]
        client = self.client()
        registered = self._scripts[script]
        for attempt in range(2):
            # Plain EVALSHA in the pipeline: redis-py's pipelined Script objects would
            # add a SCRIPT EXISTS round trip to every call.
            async with client.pipeline(transaction=False) as pipe:
                for args in calls:
                    pipe.evalsha(registered.sha, 0, *args)
                try:
                    return list(await pipe.execute())
                except NoScriptError as exc:  # flushed by a restart: load and go again
                    if attempt:
                        raise self.error(exc) from None
                    await self.call(client.script_load(load_script(script)))
                except (RedisError, OSError) as exc:
                    raise self.error(exc) from None
        raise AssertionError("unreachable")
