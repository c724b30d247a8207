"""One NATS connection of a backend: bounded connect, reconnect logging, error mapping.

:class:`Connection` is what the NATS broker and result store share: it checks the URL,
connects within a bound (reconnecting by itself afterwards, logged as one line per
disconnect and per reconnect), makes raw JetStream API requests and maps client errors to
:class:`~taskflow.errors.BrokerError` naming the masked URL. Each backend owns one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Mapping
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

import nats
import nats.errors
from nats.aio.client import Client
from nats.js.client import JetStreamContext
from nats.js.errors import NotFoundError

from .._tls import Security, explain, resolve, url_with
from .._waiters import within
from ..errors import BrokerError, ConfigError, QueueFull
from ..urls import mask_url, parse_url

__all__ = ["API_TIMEOUT", "Connection", "connect_error"]

# One logger for the connection lines of both backends: operators filter on it.
log = logging.getLogger("taskflow.brokers.nats")

API_TIMEOUT = 5.0
"""Seconds a client call or JetStream API request may take before it is an error."""

CLOSE_STEP = 2.0
"""Seconds each step of closing a connection may take (a PING, the drain, the close): past
it the step is given up, so that closing an app whose server stopped answering returns."""

PENDING_SIZE = 2 * 1024 * 1024
"""Bytes the client buffers for its flusher; a publish that would pass this waits for the
flusher to write (see :meth:`Connection.publish`)."""

_PUB_OVERHEAD = 64  # bytes of a PUB line besides its subjects and payload

_CONNECTION_ERRORS = (
    OSError,
    asyncio.TimeoutError,
    nats.errors.UnexpectedEOF,
    nats.errors.StaleConnectionError,
    nats.errors.ConnectionClosedError,
    nats.errors.NoServersError,
)


class _ConnectionLog:
    """nats-py's callbacks, as one WARNING line per disconnect and one per reconnect.

    A server restart is routine: the client reconnects by itself and callers ride it out,
    so no traceback. A connection error is only remembered, as the cause the disconnect
    line names (the failed attempts while the server is down stay quiet); any other
    asynchronous error (a slow consumer, a permission violation) gets a line of its own.
    """

    def __init__(self, masked: str) -> None:
        self.masked = masked
        self.client: Client | None = None
        self.down = False
        self.cause: str | None = None
        self.refused: str | None = None  # an authorization error while connecting

    def cause_of(self, exc: BaseException) -> BaseException:
        """What a failed connect reports: the last connection error the client saw (a
        TLS or authorization failure) rather than a bare timeout."""
        if self.refused:
            return ConnectionError(self.refused)
        if self.cause and (isinstance(exc, TimeoutError | nats.errors.NoServersError)):
            return ConnectionError(self.cause)
        return exc

    async def error(self, exc: Exception) -> None:
        text = str(exc) or type(exc).__name__
        if self.client is None and "authorization" in text.lower():
            self.refused = text  # still connecting: the failed connect reports it
        elif isinstance(exc, _CONNECTION_ERRORS):
            self.cause = self.cause or text
        else:
            log.warning("NATS at %s: %s", self.masked, text)

    async def disconnected(self) -> None:
        if self.down or self.client is None or self.client.is_closed:
            return  # a deliberate close, or already reported
        self.down = True
        log.warning(
            "NATS at %s: disconnected (%s); reconnecting",
            self.masked,
            self.cause or "connection lost",
        )

    async def reconnected(self) -> None:
        self.down, self.cause = False, None
        log.warning("NATS at %s: reconnected", self.masked)


def connect_error(masked: str, exc: BaseException, *, without_cert: bool = False) -> BrokerError:
    """A failed connect as a BrokerError naming the (masked) URL and, for TLS, the cause.

    ``without_cert``: TLS without a client certificate, so a server that drops the
    connection right after the handshake most likely requires one (TLS 1.3 checks the
    client's certificate after the handshake).
    """
    reason = explain(str(exc) or type(exc).__name__, without_cert=without_cert)
    if "authorization" in reason.lower():
        reason = f"authorization failed (check the user, password, token, creds or nkey): {reason}"
    return BrokerError(f"cannot connect to NATS at {masked}: {reason}")


def _auth_arguments(security: Security, user: str | None) -> dict[str, Any]:
    """nats-py's ``connect`` arguments for the credentials and TLS of ``security``."""
    out: dict[str, Any] = {}
    if security.context is not None:
        out["tls"] = security.context
    if security.password is not None:
        if user is None:
            out["token"] = security.password
        else:
            out["user"], out["password"] = user, security.password
    elif security.token is not None:
        out["token"] = security.token
    if security.creds_file is not None:
        out["user_credentials"] = security.creds_file
    if security.nkey_file is not None:
        out["nkeys_seed"] = security.nkey_file
    return out


async def _requires_tls(server: str, timeout: float) -> bool:
    """Whether the server's greeting (its INFO line) says TLS is required.

    True when it cannot be told (no answer, not a NATS greeting): connecting then fails
    with the client library's own error.
    """
    parts = urlsplit(server)
    try:
        reader, writer = await within(
            asyncio.open_connection(parts.hostname, parts.port or 4222), timeout
        )
    except (OSError, TimeoutError):
        return True
    try:
        line = await within(reader.readline(), timeout)
    except (OSError, TimeoutError):
        return True
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
    if not line.startswith(b"INFO "):
        return True
    try:
        info = json.loads(line[5:])
    except ValueError:
        return True
    return bool(info.get("tls_required")) if isinstance(info, dict) else True


class Connection:
    """A ``nats://`` / ``tls://`` URL and, between :meth:`open` and :meth:`close`, its
    connection.

    ``owner`` names the class in URL errors. ``security``: the TLS and credential options
    given as keyword arguments (see :mod:`taskflow._tls`); the URL's query options of the
    same names apply where a keyword argument is None.
    """

    def __init__(
        self,
        url: str,
        *,
        role: Literal["broker", "results"],
        owner: str,
        connect_timeout: float,
        security: Mapping[str, Any] | None = None,
    ) -> None:
        """Check ``url`` and the TLS and credential options (building the TLS context
        once); nothing connects yet."""
        parsed = parse_url(url, role)
        if parsed.scheme not in ("nats", "tls"):
            raise ConfigError(f"{owner} needs a nats:// or tls:// URL, got {parsed.masked!r}")
        self.url = url_with(url, security or {})
        """``url`` with the options given as keyword arguments added to its query (a
        result store derived from it connects the same way)."""
        self.masked = mask_url(self.url)
        self.security = resolve(
            self.masked,
            role=role,
            scheme_tls=parsed.scheme == "tls",
            url_password=parsed.password is not None,
            url_user=parsed.username is not None and parsed.password is None,
            given=security or {},
            query=parsed.options,
            nats=True,
        )
        """The checked TLS and credential settings."""
        server = parsed.without_query()
        user = unquote(parsed.username) if parsed.username else None
        if self.security.password is not None or self.security.token is not None:
            # The secret comes from a file or the environment: the client gets it (and the
            # user name) as arguments, the URL keeps only the host.
            scheme, _, rest = server.partition("://")
            server = f"{scheme}://{rest.rpartition('@')[2]}"
        self.server = server
        """The URL for the client library (no query string)."""
        self._auth = _auth_arguments(self.security, user)
        self.connect_timeout = float(connect_timeout)
        self._what = "broker" if role == "broker" else "result store"
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None

    @property
    def connected(self) -> bool:
        """True between :meth:`open` and :meth:`close`."""
        return self._nc is not None

    def client(self) -> Client:
        """The connected client; BrokerError before :meth:`open` and after :meth:`close`."""
        if self._nc is None:
            raise BrokerError(f"NATS {self._what} {self.masked} is not connected")
        return self._nc

    def jetstream(self) -> JetStreamContext:
        """The connection's JetStream context for async publishes, made once.

        A context subscribes its own reply inbox on its first ``publish_async``; a fresh
        context per call would leave one subscription behind per publish.
        """
        if self._js is None:
            self._js = self.client().jetstream()
        return self._js

    async def open(self) -> Client:
        """Connect, with automatic reconnects afterwards; BrokerError within the bound.

        With TLS asked for, a server whose greeting does not require TLS is refused before
        the client sends anything: the client library would otherwise go on in plain text.
        """
        events = _ConnectionLog(self.masked)
        timeout = self.connect_timeout
        if self.security.tls and not await _requires_tls(self.server, timeout):
            raise BrokerError(
                f"cannot connect to NATS at {self.masked}: TLS is asked for (tls:// or a "
                "tls_* option) but the server does not require TLS; refusing a plain-text "
                "connection (configure a tls block on the server)"
            )
        try:
            events.client = await within(
                nats.connect(
                    servers=[self.server],
                    connect_timeout=timeout,
                    allow_reconnect=True,
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=0.25,
                    error_cb=events.error,
                    disconnected_cb=events.disconnected,
                    reconnected_cb=events.reconnected,
                    pending_size=PENDING_SIZE,
                    **self._auth,
                ),
                timeout + 1.0,
            )
        except Exception as exc:
            without_cert = self.security.tls and self.security.cert_file is None
            raise connect_error(
                self.masked, events.cause_of(exc), without_cert=without_cert
            ) from None
        self._nc = events.client
        return events.client

    async def close(self, *, drain: bool = False) -> None:
        """Close the connection (after delivering what is in flight, with ``drain``).
        Idempotent. Each step (a PING before the drain, the drain, the close) gets
        :data:`CLOSE_STEP` seconds: a server that stops answering costs a close at most
        three times that, and a WARNING line."""
        nc, self._nc, self._js = self._nc, None, None
        if nc is None:
            return
        # A server that does not answer a PING is not drained: nats-py's drain would hold
        # on to the cancellation of its wait (see _bounded) and leave its tasks behind.
        if drain and not (await _answers(nc) and await _bounded(nc.drain(), CLOSE_STEP)):
            log.warning(
                "NATS at %s: the server did not answer within %gs; closing the connection "
                "without draining it (unacknowledged messages are delivered again)",
                self.masked,
                CLOSE_STEP,
            )
        if not await _bounded(nc.close(), CLOSE_STEP):
            log.warning(
                "NATS at %s: closing the connection took longer than %gs; left it to the client",
                self.masked,
                CLOSE_STEP,
            )

    async def call(
        self,
        awaitable: Awaitable[Any],
        timeout: float = API_TIMEOUT,
        *,
        keep: tuple[type[BaseException], ...] = (),
    ) -> Any:
        """Await a client call within ``timeout``; its errors become BrokerError naming
        the URL, except the ``keep`` exceptions (which the caller handles)."""
        try:
            return await within(awaitable, timeout)
        except (BrokerError, QueueFull, asyncio.CancelledError):
            raise
        except Exception as exc:
            if isinstance(exc, keep):
                raise
            raise self.failure(exc) from exc

    def failure(self, exc: Exception) -> BrokerError:
        """The BrokerError naming the URL for a failed client call: a ``TimeoutError`` (a
        bound's or the client's own) says the server stopped answering."""
        if isinstance(exc, TimeoutError):
            return BrokerError(
                f"NATS {self.masked}: no reply in time (the server stopped answering)"
            )
        return self._error(exc)

    def _error(self, exc: Exception) -> BrokerError:
        return BrokerError(f"NATS {self.masked}: {type(exc).__name__}: {exc}")

    async def publish(self, subject: str, payload: bytes = b"", *, reply: str = "") -> None:
        """A core NATS publish (an ack, a pull request): into the client's buffer, which its
        flusher writes together with everything else published in the same loop turn.

        While the buffer has room the client returns without waiting on anything, so no
        deadline is armed (a timer per ack costs more than the publish); a publish that
        would fill the buffer waits for the flusher within :data:`API_TIMEOUT`.
        """
        nc = self.client()
        size = len(subject) + len(reply) + len(payload) + _PUB_OVERHEAD
        if nc.pending_data_size + size >= PENDING_SIZE:
            await self.call(nc.publish(subject, payload, reply=reply))
            return
        try:
            await nc.publish(subject, payload, reply=reply)
        except Exception as exc:
            raise self._error(exc) from exc

    async def api(self, op: str, payload: dict[str, Any]) -> dict[str, Any]:
        """A raw JetStream API request (``op`` like ``STREAM.PURGE.<name>``); a 404 is
        NotFoundError, any other error BrokerError."""
        msg = await self.call(
            self.client().request(
                f"$JS.API.{op}", json.dumps(payload).encode(), timeout=API_TIMEOUT
            )
        )
        resp: dict[str, Any] = json.loads(msg.data)
        error = resp.get("error")
        if error:
            if error.get("code") == 404:
                raise NotFoundError(code=404, description=error.get("description"))
            raise BrokerError(f"NATS {self.masked}: {op}: {error.get('description')}")
        return resp


async def _answers(nc: Client) -> bool:
    """Whether the server answers a PING within :data:`CLOSE_STEP`."""
    try:
        await within(nc.flush(), CLOSE_STEP)
    except Exception:  # a timeout, or the connection already closed or reconnecting
        return False
    return True


async def _bounded(awaitable: Awaitable[Any], timeout: float) -> bool:
    """Await ``awaitable`` for at most ``timeout`` seconds; True if it finished (an error it
    raised is dropped: closing goes on). Unlike :func:`within`, this returns at the
    deadline even when the awaited code holds on to the cancellation, as nats-py's drain
    does while it waits for a server's answer: it is then cancelled and left behind."""
    task = asyncio.ensure_future(awaitable)
    try:
        done, _ = await asyncio.wait({task}, timeout=timeout)
    except asyncio.CancelledError:
        task.cancel()
        raise
    if not done:
        task.cancel()
    task.add_done_callback(_consume)
    return bool(done)


def _consume(task: asyncio.Future[Any]) -> None:
    # Whatever became of it, it is nobody's error now (no "never retrieved" line).
    if not task.cancelled():
        task.exception()
