"""Names, tunables and small helpers shared by the NATS broker modules and result store.

Nothing here holds state: subject/stream naming, the bounded connect, status detection of
pulled messages and decoding a dead letter read back through the stream API.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import logging
import math
import re
from typing import Any, NamedTuple

import nats
import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg

from .._waiters import within
from ..errors import BrokerError
from .base import DeadLetter

__all__ = [
    "API_TIMEOUT",
    "DELAY_POLL",
    "LEVELS",
    "PAUSE_CACHE",
    "PULL_TIMEOUT",
    "RESCAN",
    "Framing",
    "connect_nats",
    "dead_letter_from_raw",
    "framing",
    "pull_status",
    "stream_name",
    "subject_token",
    "unsubscribe_later",
    "untoken",
]

log = logging.getLogger("taskflow.brokers.nats")

_PLAIN = re.compile(r"[A-Za-z0-9_-]+")
LEVELS = range(9, -1, -1)
"""Priority levels in fetch order: strict priority means the highest level is pulled first."""
DELAY_POLL = 1.0  # seconds between no-wait pulls of the delay consumer while idle
PAUSE_CACHE = 2.0  # seconds a pause flag read from KV is trusted
RESCAN = 1.0  # seconds a priority level seen empty is skipped without an announcement
API_TIMEOUT = 5.0
PULL_TIMEOUT = 1.0  # a no-wait pull is answered at once; longer means a stale consumer


def subject_token(text: str) -> str:
    """``text`` as one subject token: kept if plain, else ``=`` + hex (never ambiguous)."""
    return text if _PLAIN.fullmatch(text) else "=" + text.encode().hex()


def untoken(token: str) -> str:
    """The text a :func:`subject_token` stands for (ValueError if it stands for none)."""
    return bytes.fromhex(token[1:]).decode() if token.startswith("=") else token


_COUNT = re.compile(r"[0-9]{1,18}")


class Framing(NamedTuple):
    """What a pulled message's subject and ``Tf-*`` headers say about it."""

    queue: str
    id: str
    priority: int
    base: int
    """Deliveries made before this copy was published (``Tf-Base``)."""
    max_deliveries: int
    eta: float | None


def _count(headers: dict[str, str], name: str, default: int, least: int) -> int:
    text = headers.get(name)
    if text is None:
        return default
    if not _COUNT.fullmatch(text) or int(text) < least:
        raise ValueError(f"header {name} is not an integer >= {least}")
    return int(text)


def framing(msg: Msg) -> Framing:
    """Parse a work (``P.q.<queue>.p<level>.<id>``) or delay (``P.d.<queue>.<id>``) message.

    Raises ValueError naming what is malformed (never a value): a foreign producer's bad
    header or subject token must dead-letter that one message, not fail a whole fetch.
    """
    parts = msg.subject.split(".")
    headers = msg.headers or {}
    work = len(parts) == 5 and parts[1] == "q"
    if not work and not (len(parts) == 4 and parts[1] == "d"):
        raise ValueError("the subject does not have the layout of a work or delay message")
    try:
        queue, mid = untoken(parts[2]), untoken(parts[-1])
    except ValueError:
        raise ValueError("a subject token is not plain nor '=' + the hex of UTF-8") from None
    eta: float | None = None
    if work:
        level = parts[3]
        if not (len(level) == 2 and level[0] == "p" and level[1].isdigit()):
            raise ValueError("the priority token is not p0-p9")
        priority = int(level[1])
    else:
        priority = _count(headers, "Tf-Pri", 0, 0)
        if priority > 9:
            raise ValueError("header Tf-Pri is not an integer 0-9")
        try:
            eta = float(headers.get("Tf-Eta", ""))
        except ValueError:
            raise ValueError("header Tf-Eta is not a number") from None
        if not math.isfinite(eta):
            raise ValueError("header Tf-Eta is not a finite number")
    base = _count(headers, "Tf-Base", 0, 0)
    return Framing(queue, mid, priority, base, _count(headers, "Tf-Max", 1, 1), eta)


def stream_name(text: str) -> str:
    """A name valid for streams, consumers and KV buckets (plain, or a stable hash)."""
    return text if _PLAIN.fullmatch(text) else "h" + hashlib.sha1(text.encode()).hexdigest()[:16]


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


_CONNECTION_ERRORS = (
    OSError,
    asyncio.TimeoutError,
    nats.errors.UnexpectedEOF,
    nats.errors.StaleConnectionError,
    nats.errors.ConnectionClosedError,
    nats.errors.NoServersError,
)


async def connect_nats(url: str, masked: str, timeout: float) -> Client:
    """Connect with automatic reconnects; BrokerError naming ``masked`` within ``timeout``."""
    events = _ConnectionLog(masked)
    try:
        events.client = await within(
            nats.connect(
                servers=[url],
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
        raise BrokerError(f"cannot connect to NATS at {masked}: {reason}") from None
    return events.client


def pull_status(msg: Msg) -> str | None:
    """The status of a pull-request reply (``404``, ``408``...), None for a real message."""
    return msg.headers.get("Status") if msg.headers and not msg.data else None


async def unsubscribe_later(sub: Any, delay: float) -> None:
    """Drop ``sub`` after ``delay`` seconds (or at once when cancelled)."""
    try:
        await asyncio.sleep(delay)
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()


def _raw_headers(raw: dict[str, Any]) -> dict[str, str]:
    # The stream API returns headers as the base64 of the NATS/1.0 header block.
    headers: dict[str, str] = {}
    if raw.get("hdrs"):
        lines = base64.b64decode(raw["hdrs"]).decode().split("\r\n")[1:]
        for line in lines:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip()] = value.strip()
    return headers


def dead_letter_from_raw(raw: dict[str, Any], queue: str) -> DeadLetter:
    """A :class:`DeadLetter` from a ``STREAM.MSG.GET`` reply of the dead-letter stream."""
    headers = _raw_headers(raw)
    token = str(raw["subject"]).rsplit(".", 1)[1]
    try:
        mid = untoken(token)
    except ValueError:
        mid = token  # dead-lettered because its id token was malformed: shown as it came
    return DeadLetter(
        id=mid,
        queue=queue,
        body=base64.b64decode(raw.get("data") or ""),
        reason=headers.get("Tf-Reason", ""),
        error=json.loads(headers.get("Tf-Error", "null")),
        failed_at=float(headers.get("Tf-At", "0")),
        delivery_count=int(headers.get("Tf-Count", "0")),
        extra={
            "priority": int(headers.get("Tf-Pri", "0")),
            "max_deliveries": int(headers.get("Tf-Max", "1")),
        },
    )
