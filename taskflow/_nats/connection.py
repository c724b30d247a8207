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
from collections.abc import Awaitable
from typing import Any, Literal

import nats
import nats.errors
from nats.aio.client import Client
from nats.js.client import JetStreamContext
from nats.js.errors import NotFoundError

from .._waiters import within
from ..errors import BrokerError, ConfigError, QueueFull
from ..urls import parse_url

__all__ = ["API_TIMEOUT", "Connection"]

# One logger for the connection lines of both backends: operators filter on it.
log = logging.getLogger("taskflow.brokers.nats")

API_TIMEOUT = 5.0
"""Seconds a client call or JetStream API request may take before it is an error."""

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

    async def error(self, exc: Exception) -> None:
        text = str(exc) or type(exc).__name__
        if isinstance(exc, _CONNECTION_ERRORS):
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


class Connection:
    """A ``nats://`` URL and, between :meth:`open` and :meth:`close`, its connection.

    ``owner`` names the class in URL errors.
    """

    def __init__(
        self,
        url: str,
        *,
        role: Literal["broker", "results"],
        owner: str,
        connect_timeout: float,
    ) -> None:
        """Check ``url``; nothing connects yet."""
        parsed = parse_url(url, role)
        if parsed.scheme != "nats":
            raise ConfigError(f"{owner} needs a nats:// URL, got {parsed.masked!r}")
        self.masked = parsed.masked
        self.server = parsed.without_query()
        """The URL for the client library (no query string)."""
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
        """Connect, with automatic reconnects afterwards; BrokerError within the bound."""
        events = _ConnectionLog(self.masked)
        timeout = self.connect_timeout
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
                ),
                timeout + 1.0,
            )
        except Exception as exc:
            reason = type(exc).__name__ if not str(exc) else str(exc)
            raise BrokerError(f"cannot connect to NATS at {self.masked}: {reason}") from None
        self._nc = events.client
        return events.client

    async def close(self, *, drain: bool = False) -> None:
        """Close the connection (after delivering what is in flight, with ``drain``).
        Idempotent."""
        nc, self._nc, self._js = self._nc, None, None
        if nc is None:
            return
        if drain:
            with contextlib.suppress(Exception):
                await within(nc.drain(), 5.0)
        with contextlib.suppress(Exception):
            await within(nc.close(), 5.0)

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
            raise BrokerError(f"NATS {self.masked}: {type(exc).__name__}: {exc}") from exc

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
