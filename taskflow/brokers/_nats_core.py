"""The JetStream layout of one NATS broker and the moves every part of it makes.

:class:`NatsCore` names the app's streams, consumers and subjects, creates them, reads and
deletes stored messages, (re)publishes and dead-letters messages, fences leases locally
and runs the no-wait pulls. The broker's fetch, delay, admin and delivery parts each take
it explicitly (see :mod:`taskflow.brokers.nats` for the layout and its trade-offs).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import json
import time
from collections.abc import Coroutine
from typing import Any

from nats.aio.msg import Msg
from nats.js.errors import NotFoundError

from .._nats.connection import Connection
from .._nats.framing import framing
from .._nats.names import stream_name, subject_token, untoken
from ..errors import BrokerError
from ._nats_pull import Puller
from ._nats_signals import Signals
from .base import DeadLetter

__all__ = ["DEDUP_WINDOW", "LEVELS", "NatsCore"]

LEVELS = range(9, -1, -1)
"""Priority levels in fetch order: strict priority means the highest level is pulled first."""

DEDUP_WINDOW = 120.0
"""Seconds of the streams' duplicate window when taskflow creates them: a publish sent
again with the same ``Nats-Msg-Id`` within it is stored once."""

_ERROR_ROOM = 4096  # bytes of error text a dead letter's Tf-Error header keeps


class NatsCore:
    """One app's streams on one connection, and the broker's local state about them."""

    def __init__(self, conn: Connection, prefix: str, lease: float) -> None:
        """Name the streams of ``prefix``; ``lease`` is the ack wait of consumed queues."""
        self.conn = conn
        self.lease = lease
        self.root = subject_token(prefix)
        name = stream_name(prefix)
        self.work, self.delays, self.dlq = (f"TF_{name}_WORK", f"TF_{name}_DELAY", f"TF_{name}_DLQ")
        self.state_bucket = f"TF_{name}_STATE"
        self.signals = Signals()
        self._pullers: dict[tuple[str, str], Puller] = {}
        self._tokens = itertools.count(1)
        self._leases: dict[int, int] = {}
        self._lease_ends: list[tuple[float, int, int]] = []  # (monotonic end, seq, token)
        self._declared: set[str] = set()
        self._consuming: set[str] = set()
        self._ack_waits: dict[str, float] = {}
        # Seconds within which the work stream stores one message per ``Nats-Msg-Id``
        # (read from the stream when the broker connects).
        self.dedup_window = DEDUP_WINDOW
        self._lost: list[DeadLetter] = []
        self._background: set[asyncio.Task[Any]] = set()

    def stop(self) -> None:
        """On close: cancel background work, wake every waiter, forget what was created
        (a reconnect checks again)."""
        for task in list(self._background):
            task.cancel()
        self.signals.wake_all()
        self._declared.clear()
        self._consuming.clear()
        self._pullers.clear()

    # -- streams and consumers -------------------------------------------------------
    async def ensure_stream(self, name: str, subject: str, retention: str) -> dict[str, Any]:
        """Create the stream ``name`` over ``subject`` unless it exists; its config (as
        created, or as found: it may have been changed by hand)."""
        try:
            info = await self.conn.api(f"STREAM.INFO.{name}", {})
        except NotFoundError:
            info = await self.conn.api(
                f"STREAM.CREATE.{name}",
                {
                    "name": name,
                    "subjects": [subject],
                    "retention": retention,
                    "storage": "file",
                    "discard": "old",
                    "duplicate_window": int(DEDUP_WINDOW * 1e9),
                    "num_replicas": 1,
                },
            )
        config: dict[str, Any] = info.get("config") or {}
        return config

    async def ensure_consumer(
        self, stream: str, durable: str, subject: str, ack_wait: float, *, update: bool = True
    ) -> float:
        """Create (or, with ``update``, reconfigure) a pull consumer; its real ack wait."""
        if not update:
            with contextlib.suppress(NotFoundError):
                info = await self.conn.api(f"CONSUMER.INFO.{stream}.{durable}", {})
                return int(info["config"]["ack_wait"]) / 1e9
        resp = await self.conn.api(
            f"CONSUMER.DURABLE.CREATE.{stream}.{durable}",
            {
                "stream_name": stream,
                "config": {
                    "durable_name": durable,
                    "filter_subject": subject,
                    "ack_policy": "explicit",
                    "deliver_policy": "all",
                    "ack_wait": int(ack_wait * 1e9),
                    "max_deliver": -1,
                    "max_ack_pending": -1,
                    "max_waiting": 4096,
                },
            },
        )
        return int(resp["config"]["ack_wait"]) / 1e9

    def consumer(self, queue: str, level: int) -> str:
        """The durable consumer of one priority level of ``queue``."""
        suffix = f"_p{level}"
        return stream_name(queue, room=len(suffix)) + suffix

    async def ensure_queue(self, queue: str, *, consume: bool = False) -> None:
        """Make sure the queue's consumers exist. The lease is their ack wait, shared by
        every process: a consuming broker sets it to its own ``lease``, any other only
        creates missing consumers (a producer with another lease must not change it)."""
        if queue in (self._consuming if consume else self._declared):
            return
        qt = subject_token(queue)
        waits = await asyncio.gather(
            *(
                self.ensure_consumer(
                    self.work,
                    self.consumer(queue, level),
                    f"{self.root}.q.{qt}.p{level}.*",
                    self.lease,
                    update=consume,
                )
                for level in LEVELS
            )
        )
        self._ack_waits[queue] = min(waits)
        self._declared.add(queue)
        if consume:
            self._consuming.add(queue)

    def ack_wait(self, queue: str) -> float:
        """The consumers' ack wait of ``queue`` as the server has it: the real lease."""
        return self._ack_waits.get(queue, self.lease)

    async def delete(self, stream: str, seq: int, consumer: str) -> bool:
        """Delete one stored message by sequence; False if it was gone."""
        # By sequence, never a filtered purge, and followed by a consumer info request:
        # 2.9 consumers otherwise keep counting the deleted message as pending, and
        # their no-wait pulls go unanswered.
        try:
            resp = await self.conn.api(
                f"STREAM.MSG.DELETE.{stream}", {"seq": seq, "no_erase": True}
            )
        except (NotFoundError, BrokerError):
            return False
        with contextlib.suppress(NotFoundError, BrokerError):
            await self.conn.api(f"CONSUMER.INFO.{stream}.{consumer}", {})
        return bool(resp.get("success"))

    async def scan(self, stream: str, subject: str, start: int, limit: int) -> list[dict[str, Any]]:
        """Stored messages on ``subject`` from sequence ``start``, oldest first."""
        out: list[dict[str, Any]] = []
        while len(out) < limit:
            try:
                resp = await self.conn.api(
                    f"STREAM.MSG.GET.{stream}", {"seq": start, "next_by_subj": subject}
                )
            except NotFoundError:
                break
            out.append(resp["message"])
            start = int(resp["message"]["seq"]) + 1
        return out

    # -- subjects and (re)publishing -------------------------------------------------
    def work_subject(self, queue: str, priority: int, mid: str) -> str:
        """Where a ready message waits: ``P.q.<queue>.p<priority>.<id>``."""
        return f"{self.root}.q.{subject_token(queue)}.p{priority}.{subject_token(mid)}"

    def delay_subject(self, queue: str, mid: str) -> str:
        """Where a delayed message waits: ``P.d.<queue>.<id>``."""
        return f"{self.root}.d.{subject_token(queue)}.{subject_token(mid)}"

    def route(
        self, queue: str, priority: int, mid: str, eta: float | None, headers: dict[str, str]
    ) -> str:
        """The subject to publish to; a message due later gets its ``Tf-Eta``/``Tf-Pri``."""
        if eta is not None and eta > time.time():
            headers["Tf-Eta"] = repr(eta)
            headers["Tf-Pri"] = str(priority)
            return self.delay_subject(queue, mid)
        return self.work_subject(queue, priority, mid)

    async def notify(self, delayed: bool, levels: set[tuple[str, int]]) -> None:
        """Tell every fetcher (this process at once, others over core NATS) what changed."""
        self.signals.mark(delayed, levels)
        payload = json.dumps({"d": delayed, "l": sorted(levels)}).encode()
        with contextlib.suppress(Exception):
            await self.conn.client().publish(f"{self.root}.n", payload)

    async def republish(
        self,
        msg: Msg,
        body: bytes,
        *,
        base: int,
        max_deliveries: int,
        eta: float | None,
        dedup: str,
    ) -> None:
        """Publish a new copy of ``msg`` with ``body`` (deduplicated by ``dedup``)."""
        frame = framing(msg)
        queue, mid, priority = frame.queue, frame.id, frame.priority
        headers = {
            "Nats-Msg-Id": f"{mid}.{dedup}",
            "Tf-Max": str(max_deliveries),
            "Tf-Base": str(max(0, base)),
        }
        subject = self.route(queue, priority, mid, eta, headers)
        js = self.conn.client().jetstream()
        await self.conn.call(js.publish(subject, body, headers=headers))
        await self.notify(eta is not None, set() if eta is not None else {(queue, priority)})

    async def ack(self, msg: Msg) -> None:
        """Acknowledge ``msg`` (the stream drops it)."""
        await self.conn.publish(msg.reply)

    async def bury(
        self,
        msg: Msg,
        queue: str,
        priority: int,
        *,
        count: int,
        max_deliveries: int,
        reason: str,
        error: str | None,
        report: bool = False,
    ) -> None:
        """Copy ``msg`` to the dead-letter stream, then ack it. With ``report``, the dead
        letter is also handed to :meth:`take_lost` (its record is the worker's to fail)."""
        token = msg.subject.rsplit(".", 1)[1]
        try:
            mid: str | None = untoken(token)
        except ValueError:
            mid = None  # a malformed id token: filed as it came, no record to fail
        # A dead letter carries the error beside the body and must still fit max_payload
        # (bodies leave HEADER_ROOM for it at enqueue).
        error_text = json.dumps(error)
        if len(error_text) > _ERROR_ROOM:
            error_text = json.dumps((error or "")[: _ERROR_ROOM // 2] + " [truncated]")
        now = time.time()
        headers = {
            "Tf-Reason": reason,
            "Tf-Error": error_text,
            "Tf-Count": str(count),
            "Tf-Pri": str(priority),
            "Tf-Max": str(max_deliveries),
            "Tf-At": repr(now),
            "Nats-Msg-Id": f"{token}.x{msg.metadata.sequence.stream}",
        }
        subject = f"{self.root}.dlq.{subject_token(queue)}.{token}"
        js = self.conn.client().jetstream()
        await self.conn.call(js.publish(subject, msg.data, headers=headers))
        await self.ack(msg)
        if report and mid is not None:
            extra = {"priority": priority, "max_deliveries": max_deliveries}
            self._lost.append(DeadLetter(mid, queue, msg.data, reason, error, now, count, extra))

    def take_lost(self) -> list[DeadLetter]:
        """Messages this instance's fetches dead-lettered since the last call: reason
        ``worker_lost`` (deliveries ran out) or ``undecodable`` (malformed framing)."""
        lost, self._lost = self._lost, []
        return lost

    # -- leases ----------------------------------------------------------------------
    def lease_out(self, seq: int, lease: float) -> int:
        """Fence the message at stream sequence ``seq``: the token its settles must show."""
        token = next(self._tokens)
        self._leases[seq] = token
        if len(self._lease_ends) < 10_000:
            heapq.heappush(self._lease_ends, (time.monotonic() + lease, seq, token))
        if len(self._leases) > 100_000:  # abandoned leases of redelivered messages
            for old in list(self._leases)[:50_000]:
                del self._leases[old]
        return token

    def lease_held(self, seq: int, token: int, *, release: bool) -> bool:
        """True if ``token`` still holds ``seq`` (and, with ``release``, let it go)."""
        if self._leases.get(seq) != token:
            return False
        if release:
            del self._leases[seq]
        return True

    def next_lease_end(self, now: float) -> float | None:
        """When (monotonic) the next lease held here runs out. Leases that ran out by
        ``now`` are dropped and make the next fetch rescan: the server redelivers. Settled
        ones are dropped alone: their messages were acked, nothing comes back (a waiting
        fetch would otherwise wake, and rescan every level, once per message it took)."""
        ends = self._lease_ends
        while ends:
            end, seq, token = ends[0]
            held = self._leases.get(seq) == token
            if held and end >= now:
                return end
            heapq.heappop(ends)
            if held:
                self.signals.rescan = True
        return None

    # -- pulling ---------------------------------------------------------------------
    async def pull(self, stream: str, consumer: str, batch: int) -> list[Msg]:
        """A no-wait pull: whatever is available now, up to ``batch``."""
        puller = self._pullers.get((stream, consumer))
        if puller is None:
            puller = Puller(self.conn, stream, consumer, self.spawn, self.requeue_orphan)
            self._pullers[(stream, consumer)] = puller
        return await puller.pull(batch)

    async def requeue_orphan(self, msg: Msg) -> None:
        """Hand back uncounted a message a pull abandoned half-way received."""
        try:
            frame = framing(msg)
        except ValueError:
            frame = None
        if frame is None or frame.eta is not None:
            # Delayed, or malformed: the next fetch that pulls it again deals with it.
            await msg.nak()
            return
        await self.republish(
            msg,
            msg.data,
            base=frame.base + msg.metadata.num_delivered - 1,
            max_deliveries=frame.max_deliveries,
            eta=None,
            dedup=f"o{msg.metadata.sequence.stream}",
        )
        await msg.ack()

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run ``coro`` in the background; :meth:`stop` cancels it."""
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
