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
import re
from typing import Any

import nats
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
    "connect_nats",
    "dead_letter_from_raw",
    "pull_status",
    "stream_name",
    "subject_token",
    "unsubscribe_later",
    "untoken",
]

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
    """The text a :func:`subject_token` stands for."""
    return bytes.fromhex(token[1:]).decode() if token.startswith("=") else token


def stream_name(text: str) -> str:
    """A name valid for streams, consumers and KV buckets (plain, or a stable hash)."""
    return text if _PLAIN.fullmatch(text) else "h" + hashlib.sha1(text.encode()).hexdigest()[:16]


async def connect_nats(url: str, masked: str, timeout: float) -> Client:
    """Connect with automatic reconnects; BrokerError naming ``masked`` within ``timeout``."""

    async def quiet(_exc: Exception) -> None:
        return None

    try:
        return await within(
            nats.connect(
                servers=[url],
                connect_timeout=timeout,
                allow_reconnect=True,
                max_reconnect_attempts=-1,
                reconnect_time_wait=0.25,
                error_cb=quiet,
            ),
            timeout + 1.0,
        )
    except Exception as exc:
        reason = type(exc).__name__ if not str(exc) else str(exc)
        raise BrokerError(f"cannot connect to NATS at {masked}: {reason}") from None


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
    return DeadLetter(
        id=untoken(str(raw["subject"]).rsplit(".", 1)[1]),
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
