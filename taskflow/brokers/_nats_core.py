"""The plumbing every part of the NATS broker stands on.

:class:`NatsCore` owns the broker's configuration and local state, the JetStream API calls
(with errors mapped to :class:`~taskflow.errors.BrokerError`), stream/consumer creation,
subject naming, republishing and burying messages, local lease fencing and the wake-ups of
waiting fetchers. The delay, admin and public broker classes build on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import json
import time
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.client import JetStreamContext
from nats.js.errors import NotFoundError

from .._waiters import within
from ..errors import BrokerError, ConfigError, QueueFull
from ..urls import parse_url
from ._nats_common import API_TIMEOUT, LEVELS, framing, stream_name, subject_token, untoken
from ._nats_pull import Puller
from .base import DeadLetter

__all__ = ["NatsCore"]

_ERROR_ROOM = 4096  # bytes of error text a dead letter's Tf-Error header keeps


class NatsCore:
    """Connection, namespace and JetStream API plumbing shared by the broker's parts."""

    def __init__(
        self,
        url: str = "nats://127.0.0.1:4222",
        *,
        prefix: str = "taskflow",
        lease: float = 30.0,
        connect_timeout: float = 5.0,
    ) -> None:
        """Validate the URL and name the streams; nothing connects yet."""
        parsed = parse_url(url, "broker")
        if parsed.scheme != "nats":
            raise ConfigError(f"NatsBroker needs a nats:// URL, got {parsed.masked!r}")
        if not prefix:
            raise ConfigError(f"{parsed.masked}: prefix must not be empty")
        self.url = url
        self._masked = parsed.masked
        self._server = parsed.without_query()
        self.lease = float(lease)
        self.connect_timeout = float(connect_timeout)
        self.root = subject_token(prefix)
        name = stream_name(prefix)
        self.work, self.delays, self.dlq = (f"TF_{name}_WORK", f"TF_{name}_DELAY", f"TF_{name}_DLQ")
        self.state_bucket = f"TF_{name}_STATE"
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._subs: list[Any] = []
        self._pullers: dict[tuple[str, str], Puller] = {}
        self._tokens = itertools.count(1)
        self._leases: dict[int, int] = {}
        self._declared: set[str] = set()
        self._consuming: set[str] = set()
        self._ack_waits: dict[str, float] = {}
        self._lost: list[DeadLetter] = []
        self._limits: dict[str, int] = {}
        self._wakers: list[asyncio.Future[None]] = []
        self._due: list[float] = []
        self._lease_ends: list[float] = []
        self._known_empty: set[tuple[str, int]] = set()
        self._level_gen: dict[tuple[str, int], int] = {}
        self._rescan = True
        self._last_scan = 0.0
        self._delay_dirty = True
        self._last_delay_pull = 0.0
        self._paused: dict[str, tuple[bool, float]] = {}
        self._background: set[asyncio.Task[Any]] = set()

    # -- JetStream API ---------------------------------------------------------------
    def _conn(self) -> Client:
        if self._nc is None:
            raise BrokerError(f"NATS broker {self._masked} is not connected")
        return self._nc

    def _jet(self) -> JetStreamContext:
        """The connection's JetStream context for async publishes, made once.

        A context subscribes its own reply inbox on its first ``publish_async``; a fresh
        context per call would leave one subscription behind per publish.
        """
        if self._js is None:
            self._js = self._conn().jetstream()
        return self._js

    async def _call(self, coro: Any, timeout: float = API_TIMEOUT) -> Any:
        """Await a client call; client errors become BrokerError naming the URL."""
        try:
            return await within(coro, timeout)
        except (BrokerError, QueueFull, asyncio.CancelledError):
            raise
        except Exception as exc:
            raise BrokerError(f"NATS {self._masked}: {type(exc).__name__}: {exc}") from exc

    async def _api(self, op: str, payload: dict[str, Any]) -> dict[str, Any]:
        """A raw JetStream API request (``op`` like ``STREAM.PURGE.<name>``)."""
        msg = await self._call(
            self._conn().request(f"$JS.API.{op}", json.dumps(payload).encode(), timeout=API_TIMEOUT)
        )
        resp: dict[str, Any] = json.loads(msg.data)
        error = resp.get("error")
        if error:
            if error.get("code") == 404:
                raise NotFoundError(code=404, description=error.get("description"))
            raise BrokerError(f"NATS {self._masked}: {op}: {error.get('description')}")
        return resp

    async def _ensure_stream(self, name: str, subject: str, retention: str) -> None:
        try:
            await self._api(f"STREAM.INFO.{name}", {})
        except NotFoundError:
            await self._api(
                f"STREAM.CREATE.{name}",
                {
                    "name": name,
                    "subjects": [subject],
                    "retention": retention,
                    "storage": "file",
                    "discard": "old",
                    "duplicate_window": 120_000_000_000,
                    "num_replicas": 1,
                },
            )

    async def _ensure_consumer(
        self, stream: str, durable: str, subject: str, ack_wait: float, *, update: bool = True
    ) -> float:
        """Create (or, with ``update``, reconfigure) a pull consumer; its real ack wait."""
        if not update:
            with contextlib.suppress(NotFoundError):
                info = await self._api(f"CONSUMER.INFO.{stream}.{durable}", {})
                return int(info["config"]["ack_wait"]) / 1e9
        resp = await self._api(
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

    def _consumer(self, queue: str, level: int) -> str:
        return f"{stream_name(queue)}_p{level}"

    async def _ensure_queue(self, queue: str, *, consume: bool = False) -> None:
        """Make sure the queue's consumers exist. The lease is their ack wait, shared by
        every process: a consuming broker sets it to its own ``lease``, any other only
        creates missing consumers (a producer with another lease must not change it)."""
        if queue in (self._consuming if consume else self._declared):
            return
        qt = subject_token(queue)
        waits = await asyncio.gather(
            *(
                self._ensure_consumer(
                    self.work,
                    self._consumer(queue, level),
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

    async def _delete(self, stream: str, seq: int, consumer: str) -> bool:
        # By sequence, never a filtered purge, and followed by a consumer info request:
        # 2.9 consumers otherwise keep counting the deleted message as pending, and
        # their no-wait pulls go unanswered.
        try:
            resp = await self._api(f"STREAM.MSG.DELETE.{stream}", {"seq": seq, "no_erase": True})
        except (NotFoundError, BrokerError):
            return False
        with contextlib.suppress(NotFoundError, BrokerError):
            await self._api(f"CONSUMER.INFO.{stream}.{consumer}", {})
        return bool(resp.get("success"))

    async def _scan(
        self, stream: str, subject: str, start: int, limit: int
    ) -> list[dict[str, Any]]:
        """Stored messages on ``subject`` from sequence ``start``, oldest first."""
        out: list[dict[str, Any]] = []
        while len(out) < limit:
            try:
                resp = await self._api(
                    f"STREAM.MSG.GET.{stream}", {"seq": start, "next_by_subj": subject}
                )
            except NotFoundError:
                break
            out.append(resp["message"])
            start = int(resp["message"]["seq"]) + 1
        return out

    # -- subjects and (re)publishing -------------------------------------------------
    def _work_subject(self, queue: str, priority: int, mid: str) -> str:
        return f"{self.root}.q.{subject_token(queue)}.p{priority}.{subject_token(mid)}"

    def _delay_subject(self, queue: str, mid: str) -> str:
        return f"{self.root}.d.{subject_token(queue)}.{subject_token(mid)}"

    def _route(
        self, queue: str, priority: int, mid: str, eta: float | None, headers: dict[str, str]
    ) -> str:
        if eta is not None and eta > time.time():
            headers["Tf-Eta"] = repr(eta)
            headers["Tf-Pri"] = str(priority)
            return self._delay_subject(queue, mid)
        return self._work_subject(queue, priority, mid)

    async def _notify(self, delayed: bool, levels: set[tuple[str, int]]) -> None:
        """Tell every fetcher (this process at once, others over core NATS) what changed."""
        self._mark(delayed, levels)
        payload = json.dumps({"d": delayed, "l": sorted(levels)}).encode()
        with contextlib.suppress(Exception):
            await self._conn().publish(f"{self.root}.n", payload)

    def _mark(self, delayed: bool, levels: Any) -> None:
        self._delay_dirty = self._delay_dirty or delayed
        for queue, level in levels:
            key = (str(queue), int(level))
            self._level_gen[key] = self._level_gen.get(key, 0) + 1
            self._known_empty.discard(key)
        self._wake_all()

    def _wake_all(self) -> None:
        wakers, self._wakers = self._wakers, []
        for fut in wakers:
            if not fut.done():
                fut.set_result(None)

    async def _republish(
        self,
        msg: Msg,
        body: bytes,
        *,
        base: int,
        max_deliveries: int,
        eta: float | None,
        dedup: str,
    ) -> None:
        frame = framing(msg)
        queue, mid, priority = frame.queue, frame.id, frame.priority
        headers = {
            "Nats-Msg-Id": f"{mid}.{dedup}",
            "Tf-Max": str(max_deliveries),
            "Tf-Base": str(max(0, base)),
        }
        subject = self._route(queue, priority, mid, eta, headers)
        js = self._conn().jetstream()
        await self._call(js.publish(subject, body, headers=headers))
        await self._notify(eta is not None, set() if eta is not None else {(queue, priority)})

    async def _ack(self, msg: Msg) -> None:
        await self._call(msg.ack())

    async def _bury(
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
        await self._call(self._conn().jetstream().publish(subject, msg.data, headers=headers))
        await self._ack(msg)
        if report and mid is not None:
            extra = {"priority": priority, "max_deliveries": max_deliveries}
            self._lost.append(DeadLetter(mid, queue, msg.data, reason, error, now, count, extra))

    def take_lost(self) -> list[DeadLetter]:
        """Messages this instance's fetches dead-lettered since the last call: reason
        ``worker_lost`` (deliveries ran out) or ``undecodable`` (malformed framing)."""
        lost, self._lost = self._lost, []
        return lost

    # -- leases ----------------------------------------------------------------------
    def _lease_out(self, seq: int, lease: float) -> int:
        token = next(self._tokens)
        self._leases[seq] = token
        if len(self._lease_ends) < 10_000:
            heapq.heappush(self._lease_ends, time.monotonic() + lease)
        if len(self._leases) > 100_000:  # abandoned leases of redelivered messages
            for old in list(self._leases)[:50_000]:
                del self._leases[old]
        return token

    def _lease_held(self, seq: int, token: int, *, release: bool) -> bool:
        if self._leases.get(seq) != token:
            return False
        if release:
            del self._leases[seq]
        return True

    # -- pulling ---------------------------------------------------------------------
    async def _pull(self, stream: str, consumer: str, batch: int) -> list[Msg]:
        """A no-wait pull: whatever is available now, up to ``batch``."""
        puller = self._pullers.get((stream, consumer))
        if puller is None:
            puller = self._pullers[(stream, consumer)] = Puller(self, stream, consumer)
        return await puller.pull(batch)

    async def _requeue_orphan(self, msg: Msg) -> None:
        try:
            frame = framing(msg)
        except ValueError:
            frame = None
        if frame is None or frame.eta is not None:
            # Delayed, or malformed: the next fetch that pulls it again deals with it.
            await msg.nak()
            return
        await self._republish(
            msg,
            msg.data,
            base=frame.base + msg.metadata.num_delivered - 1,
            max_deliveries=frame.max_deliveries,
            eta=None,
            dedup=f"o{msg.metadata.sequence.stream}",
        )
        await msg.ack()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
