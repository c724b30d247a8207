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
from collections.abc import Callable
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg

__all__ = ["PubAcks", "reply_body"]


SWEEP = 0.25
"""How often the deadlines of the calls waiting for a reply are checked, in seconds: a reply
that does not come fails its call between its timeout and that much later."""


class PubAcks:
    """Publishes with a reply subject on one shared inbox; each returns a future reply.

    A future whose reply has not come ``timeout`` seconds after its publish fails with
    ``TimeoutError``. One sweeper task checks every :data:`SWEEP` seconds while calls wait
    (and ends when none does), instead of a timer armed and cancelled per call: for a
    record's read or write, the timer, the extra coroutine around the call and a
    done-callback per future were a tenth to a fifth of the client's CPU for the call
    (``docs/performance.md``, "NATS: a deeper buffer for short bodies, and replies without
    a timer each").
    """

    def __init__(self, nc: Client, timeout: float) -> None:
        """Use ``nc``; :meth:`open` (on the loop) subscribes the replies' inbox before the
        first publish."""
        self._nc = nc
        self._timeout = timeout
        self._sub: Any = None
        self._prefix = ""
        self._ids = itertools.count()
        # token -> (the caller's future, the loop time its reply is due by)
        self._waiting: dict[str, tuple[asyncio.Future[Msg], float]] = {}
        self._sweeper: asyncio.Task[None] | None = None
        self._closed: Callable[[], Exception] | None = None

    @property
    def waiting(self) -> int:
        """How many calls wait for their reply."""
        return len(self._waiting)

    @property
    def sweeping(self) -> bool:
        """Whether the sweeper task runs (only while calls wait, or just after)."""
        return self._sweeper is not None

    async def open(self) -> None:
        """Subscribe the shared reply inbox."""
        if self._sub is None:
            self._prefix = self._nc.new_inbox()
            self._sub = await self._nc.subscribe(f"{self._prefix}.*", cb=self._on_reply)

    async def publish(
        self, subject: str, data: bytes, headers: dict[str, str] | None = None
    ) -> asyncio.Future[Msg]:
        """Send one message to a stream (or a request to the JetStream API); the future
        gets the server's reply, or ``TimeoutError`` once it is overdue."""
        if self._closed is not None:
            raise self._closed()
        if self._sub is None:
            raise RuntimeError("PubAcks.open() was not called: no inbox for the replies")
        loop = asyncio.get_running_loop()
        token = f"{self._prefix}.{next(self._ids)}"
        fut: asyncio.Future[Msg] = loop.create_future()
        self._waiting[token] = (fut, loop.time() + self._timeout)
        if self._sweeper is None:
            self._sweeper = loop.create_task(self._sweep())
        try:
            await self._nc.publish(subject, data, reply=token, headers=headers)
        except BaseException:
            self._waiting.pop(token, None)
            raise
        return fut

    async def _on_reply(self, msg: Msg) -> None:
        waiting = self._waiting.pop(msg.subject, None)
        if waiting is not None and not waiting[0].done():
            waiting[0].set_result(msg)

    async def _sweep(self) -> None:
        # Fails the overdue futures and forgets the abandoned (cancelled) ones; ends once
        # nothing waits (the next publish starts it again).
        loop = asyncio.get_running_loop()
        waiting = self._waiting
        while waiting:
            await asyncio.sleep(SWEEP)
            now = loop.time()
            for token in [t for t, (fut, due) in waiting.items() if due <= now or fut.done()]:
                fut, _ = waiting.pop(token)
                if not fut.done():
                    fut.set_exception(TimeoutError())
        self._sweeper = None

    def close(self, error: Callable[[], Exception]) -> None:
        """No more publishes: each raises ``error()``, and so does every call still waiting
        (at once, rather than at its timeout)."""
        self._closed = error
        sweeper, self._sweeper = self._sweeper, None
        if sweeper is not None:
            sweeper.cancel()
        waiting, self._waiting = self._waiting, {}
        for fut, _ in waiting.values():
            if not fut.done():
                fut.set_exception(error())


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
