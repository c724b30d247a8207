"""Pipelined JetStream publishes and API requests for the NATS result store.

``JetStreamContext.publish_async`` would do, but nats-py (2.16) raises inside its reply
handler on a 400 error (such as "wrong last sequence", the normal answer to a create of an
existing key), so that future never resolves. Here every reply resolves its future with the
raw reply message and the caller reads the outcome. The store's reads and compare-and-set
writes of one record go the same way: one shared inbox, no per-request subscription, and
the reply read as plain JSON (nats-py's ``KeyValue.get`` parses the stored message's
headers with the e-mail parser and its time stamp, which the store does not use).
"""

from __future__ import annotations

import asyncio
import itertools
import json
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg

__all__ = ["PubAcks", "reply_body"]


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
        self, subject: str, data: bytes, headers: dict[str, str] | None = None
    ) -> asyncio.Future[Msg]:
        """Send one message to a stream (or a request to the JetStream API); the future
        gets the server's reply."""
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


def reply_body(msg: Msg) -> tuple[dict[str, Any], tuple[int, str] | None]:
    """The JSON body of a JetStream reply (a publish's or an API call's) and its error:
    ``(err_code, description)``, or None if the call succeeded.

    A status reply (no stream listening on the subject) counts as error code 503.
    """
    status = msg.headers.get("Status") if msg.headers and not msg.data else None
    if status is not None:
        return {}, (503, f"no stream answered (status {status})")
    try:
        body = json.loads(msg.data)
    except ValueError:
        body = None
    if not isinstance(body, dict):
        return {}, (0, "unreadable reply")
    error = body.get("error")
    if not error:
        return body, None
    return body, (int(error.get("err_code") or 0), str(error.get("description") or ""))
