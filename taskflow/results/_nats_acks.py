"""Pipelined JetStream publishes for the NATS result store.

``JetStreamContext.publish_async`` would do, but nats-py (2.16) raises inside its reply
handler on a 400 error (such as "wrong last sequence", the normal answer to a create of an
existing key), so that future never resolves. Here every reply resolves its future with the
raw reply message and the caller reads the outcome.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg

__all__ = ["PubAcks", "reply_error"]


class PubAcks:
    """Publishes with a reply subject on one shared inbox; each returns a future reply."""

    def __init__(self, nc: Client) -> None:
        """Use ``nc``; the inbox is subscribed on the first publish."""
        self._nc = nc
        self._sub: Any = None
        self._prefix = ""
        self._ids = itertools.count()
        self._waiting: dict[str, asyncio.Future[Msg]] = {}

    async def publish(
        self, subject: str, data: bytes, headers: dict[str, str]
    ) -> asyncio.Future[Msg]:
        """Send one message to a stream subject; the future gets the server's reply."""
        if self._sub is None:
            self._prefix = self._nc.new_inbox()
            self._sub = await self._nc.subscribe(f"{self._prefix}.*", cb=self._on_reply)
        token = f"{self._prefix}.{next(self._ids)}"
        fut: asyncio.Future[Msg] = asyncio.get_running_loop().create_future()
        self._waiting[token] = fut
        # An abandoned (cancelled) future must not keep its slot until a reply that may
        # never come.
        fut.add_done_callback(lambda _: self._waiting.pop(token, None))
        await self._nc.publish(subject, data, reply=token, headers=headers)
        return fut

    async def _on_reply(self, msg: Msg) -> None:
        fut = self._waiting.pop(msg.subject, None)
        if fut is not None and not fut.done():
            fut.set_result(msg)


def reply_error(msg: Msg) -> tuple[int, str] | None:
    """``(err_code, description)`` of a failed publish reply, None for a stored message.

    A status reply (no stream listening on the subject) counts as error code 503.
    """
    status = msg.headers.get("Status") if msg.headers and not msg.data else None
    if status is not None:
        return 503, f"no stream answered (status {status})"
    try:
        error = json.loads(msg.data).get("error")
    except (ValueError, AttributeError):
        return 0, "unreadable publish acknowledgement"
    if not error:
        return None
    return int(error.get("err_code") or 0), str(error.get("description") or "")
