"""Admin operations of the NATS broker: depth, peek, purge, pause/resume, dead letters.

Counts come from consumer info (ready, inflight) and per-subject stream counts (scheduled,
dead). Pause flags live in the ``TF_N_STATE`` KV bucket and changes are broadcast on
``P.pause``, so every process stops delivering a paused queue within one cache period.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import json
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from nats.aio.msg import Msg
from nats.errors import ConnectionClosedError
from nats.js.api import PubAck
from nats.js.errors import APIError, NotFoundError, ServiceUnavailableError

from .._nats.connection import API_TIMEOUT
from .._nats.framing import raw_headers
from .._nats.names import stream_name, subject_token, untoken
from ..errors import BrokerError
from ._nats_core import LEVELS, NatsCore
from .base import (
    ALARM_SHARE,
    BrokerAdmin,
    CloseIds,
    DeadLetter,
    Message,
    RecordClose,
    Waiting,
    stopped_part_way,
)

__all__ = ["PAUSE_CACHE", "NatsAdmin"]

PAUSE_CACHE = 2.0  # seconds a pause flag read from KV is trusted
_RESEND_PAUSE = 0.5  # seconds between sends of a publish that got no answer
_GROUP = 256  # messages a purge takes, closes the records of, then drops, at a time


def _unanswered(cause: BaseException | None) -> bool:
    """Whether a failed publish may be sent again: the server gave no answer (or, 503,
    had no stream leader to answer with), not a refusal; and the client is still open."""
    if isinstance(cause, ConnectionClosedError):
        return False
    return not isinstance(cause, APIError) or isinstance(cause, ServiceUnavailableError)


class NatsAdmin(BrokerAdmin):
    """The :class:`~taskflow.brokers.base.BrokerAdmin` methods on JetStream, and the
    pause flags every fetch reads (:meth:`is_paused`)."""

    admin_backend = "nats"

    def __init__(self, core: NatsCore) -> None:
        """Operator actions on ``core``'s layout."""
        self._core = core
        self._conn = core.conn
        self._paused: dict[str, tuple[bool, float]] = {}

    async def alarms(self) -> list[str]:
        """The account's JetStream storage (file or memory) at ``ALARM_SHARE`` of
        its limit or more: full, the server refuses new tasks. Only account limits can be
        read by a client: a limit set for the whole server (``max_file_store``) is not
        reported."""
        try:
            info = await self._conn.api("INFO", {})
        except BrokerError:
            return []
        limits = info.get("limits") or {}
        out: list[str] = []
        for kind, used_key, limit_key in (
            ("file", "storage", "max_storage"),
            ("memory", "memory", "max_memory"),
        ):
            used, limit = int(info.get(used_key) or 0), int(limits.get(limit_key) or -1)
            if limit > 0 and used >= ALARM_SHARE * limit:
                out.append(
                    f"nats at {self._conn.masked}: {min(used / limit, 1.0):.0%} of the "
                    f"account's JetStream {kind} storage in use ({used:,} of {limit:,} "
                    f"bytes); full, it refuses new tasks"
                )
        return out

    async def _level_infos(self, queue: str) -> list[dict[str, Any]]:
        core = self._core
        await core.ensure_queue(queue)
        return list(
            await asyncio.gather(
                *(
                    self._conn.api(f"CONSUMER.INFO.{core.work}.{core.consumer(queue, level)}", {})
                    for level in LEVELS
                )
            )
        )

    async def _count(self, stream: str, subject: str) -> int:
        resp = await self._conn.api(f"STREAM.INFO.{stream}", {"subjects_filter": subject})
        subjects = resp.get("state", {}).get("subjects") or {}
        return sum(int(n) for n in subjects.values())

    async def depth(self, queue: str) -> dict[str, int]:
        """Counts from consumer info (ready, inflight) and subject counts (scheduled, dead)."""
        qt = subject_token(queue)
        infos = await self._level_infos(queue)
        return {
            "ready": sum(int(i["num_pending"]) for i in infos),
            "scheduled": await self._count(self._core.delays, f"{self._core.root}.d.{qt}.*"),
            "inflight": sum(int(i["num_ack_pending"]) for i in infos),
            "dead": await self._count(self._core.dlq, f"{self._core.root}.dlq.{qt}.*"),
        }

    async def peek(self, queue: str, limit: int = 10) -> list[bytes]:
        """Next undelivered bodies, highest level first (not removed)."""
        qt = subject_token(queue)
        out: list[bytes] = []
        for level, info in zip(LEVELS, await self._level_infos(queue), strict=True):
            start = int(info["delivered"]["stream_seq"]) + 1
            for raw in await self._core.scan(
                self._core.work, f"{self._core.root}.q.{qt}.p{level}.*", start, limit - len(out)
            ):
                out.append(base64.b64decode(raw.get("data") or ""))
            if len(out) >= limit:
                break
        return out

    async def purge_ids(self, queue: str, *, scheduled: bool = True) -> list[str]:
        """Drop the queue's ready (and scheduled) messages, one at a time; their ids (a
        failure after the first raises :class:`StoppedPartWay` with those dropped)."""
        return await self._purge(queue, scheduled, None)

    async def purge_batch_closing(
        self, queue: str, *, scheduled: bool, limit: int, closing: RecordClose
    ) -> list[str]:
        """:meth:`purge_ids`, with ``closing.close(ids)`` done for each group of messages
        taken (up to :data:`_GROUP`) before any of the group is dropped. A group whose
        ``close`` fails is handed back uncounted (``NatsCore.requeue_orphan``, or, if that
        fails too, delivered again when its lease ends); ``limit`` does not apply (one
        call drops them all)."""
        return await self._purge(queue, scheduled, closing.close)

    async def _purge(self, queue: str, scheduled: bool, close: CloseIds | None) -> list[str]:
        await self._core.ensure_queue(queue)
        ids: list[str] = []
        with stopped_part_way(ids):
            for level in LEVELS:
                await self._drain_level(queue, level, ids, close)
            if not scheduled:
                return ids
            later = await self._core.scan(
                self._core.delays, f"{self._core.root}.d.{subject_token(queue)}.*", 1, 10_000_000
            )
            for start in range(0, len(later), _GROUP):
                group = later[start : start + _GROUP]
                if close is not None:  # nothing taken: a failure leaves the group as it is
                    await close([_id_of(str(raw["subject"])) for raw in group])
                for raw in group:
                    if await self._core.delete(self._core.delays, int(raw["seq"]), "delay"):
                        ids.append(_id_of(str(raw["subject"])))
        return ids

    async def _drain_level(
        self, queue: str, level: int, ids: list[str], close: CloseIds | None
    ) -> None:
        """Drop the ready messages of one level, adding their ids to ``ids``."""
        # Pull-and-ack rather than a filtered purge: see NatsCore.delete on 2.9's consumers.
        while True:
            msgs = await self._core.pull(self._core.work, self._core.consumer(queue, level), _GROUP)
            if close is not None and msgs:
                try:
                    await close([_id_of(msg.subject) for msg in msgs])
                except Exception:
                    await self._hand_back(msgs)
                    raise
            for msg in msgs:
                await self._core.ack(msg)
                ids.append(_id_of(msg.subject))
            if len(msgs) < _GROUP:
                return

    async def _hand_back(self, msgs: Sequence[Msg]) -> None:
        """Give back, as they were, messages a purge took and will not drop. After the
        first that fails (the server stopped answering), the rest come back when their
        leases end."""
        for msg in msgs:
            try:
                await self._conn.call(self._core.requeue_orphan(msg))
            except Exception:
                return

    async def _set_paused(self, queue: str, paused: bool) -> None:
        kv = await self._conn.call(
            self._conn.client().jetstream().key_value(self._core.state_bucket)
        )
        key = f"paused.{stream_name(queue)}"
        await self._conn.call(kv.put(key, b"1") if paused else kv.put(key, b"0"))
        self._paused[queue] = (paused, time.monotonic())
        payload = json.dumps({"queue": queue, "paused": paused}).encode()
        await self._conn.call(self._conn.client().publish(f"{self._core.root}.pause", payload))
        self._core.signals.wake_all()

    async def pause(self, queue: str) -> None:
        """Stop delivering ``queue`` in every process (flag in KV, change broadcast)."""
        await self._set_paused(queue, True)

    async def resume(self, queue: str) -> None:
        """Deliver ``queue`` again."""
        await self._set_paused(queue, False)

    async def on_pause(self, msg: Msg) -> None:
        """A pause change broadcast on ``P.pause`` (by any process)."""
        with contextlib.suppress(ValueError, KeyError, TypeError):
            change = json.loads(msg.data)
            self._paused[str(change["queue"])] = (bool(change["paused"]), time.monotonic())
            self._core.signals.wake_all()

    async def is_paused(self, queue: str) -> bool:
        """Whether ``queue`` is paused (a flag read at most :data:`PAUSE_CACHE` s ago)."""
        cached = self._paused.get(queue)
        if cached is not None and time.monotonic() - cached[1] < PAUSE_CACHE:
            return cached[0]
        kv = await self._conn.call(
            self._conn.client().jetstream().key_value(self._core.state_bucket)
        )
        try:
            entry = await kv.get(f"paused.{stream_name(queue)}")
            paused = bool(entry.value == b"1")
        except Exception:
            # No flag stored (or unreadable): a queue is delivered unless paused explicitly.
            paused = False
        self._paused[queue] = (paused, time.monotonic())
        return paused

    async def dead_letters(self, queue: str, limit: int = 100) -> list[DeadLetter]:
        """The queue's dead letters, oldest first."""
        raws = await self._dead_scan(queue, limit)
        return [dead_letter_from_raw(raw, queue) for raw in raws]

    async def replay(self, queue: str, ids: Sequence[str] | None = None) -> int:
        """Republish dead letters (all, or ``ids``) with a fresh budget; remove them."""
        wanted = set(ids) if ids is not None else None
        raws = await self._dead_scan(queue, 1_000_000)
        count = 0
        try:
            for raw in raws:
                dead = dead_letter_from_raw(raw, queue)
                if wanted is not None and dead.id not in wanted:
                    continue
                extra = dead.extra
                again = Message(
                    dead.id, queue, dead.body, extra["priority"], None, extra["max_deliveries"]
                )
                fresh = await self._send_back(queue, again, raw["seq"])
                if await self._drop_dead(int(raw["seq"])) and fresh:
                    count += 1
        finally:
            await self._notify(queue, count)
        return count

    async def _notify(self, queue: str, sent: int) -> None:
        """Wake the fetchers of ``queue`` if ``sent`` messages went back to it."""
        if sent:
            await self._core.notify(False, {(queue, level) for level in LEVELS})

    async def _send_back(self, queue: str, message: Message, seq: object) -> bool:
        """Publish ``message`` to its work subject in ``queue`` under the ``Nats-Msg-Id``
        of the dead letter ``seq`` it comes from (see :meth:`requeue`), sent again while
        it gets no answer (:meth:`_resend`). False if an earlier call had sent it: the
        server answered at the first try that it held that id already."""
        headers = {"Nats-Msg-Id": f"{message.id}.y{seq}", "Tf-Max": str(message.max_deliveries)}
        subject = self._core.work_subject(queue, message.priority, message.id)
        js = self._conn.client().jetstream()
        return await self._resend(
            functools.partial(js.publish, subject, message.body, headers=headers)
        )

    async def requeue(self, queue: str, messages: Sequence[Message]) -> list[str]:
        """Republish dead letters as ``messages`` (matched by id) and remove them.

        The publish carries the dead letter's own ``Nats-Msg-Id``, so two replays of one
        dead letter inside the stream's duplicate window store one message; only the
        replay whose delete removed the dead letter reports the id. A replay whose first
        send the server answers as a duplicate (an earlier replay sent this letter, then
        failed to remove it) removes the letter and does not report the id: that
        message's task has run, or is waiting, under the earlier replay's record restart,
        and this one's must be taken back (kept, it would say ``queued`` for a message
        that is gone).

        Messages move one at a time: a failure after the first raises
        :class:`StoppedPartWay` with those sent. A publish without an answer is sent
        again with the same id until the server answers, for as long as the duplicate
        window lets a second copy be recognised (:meth:`_resend`); after that, the dead
        letter stays.
        """
        wanted = {m.id: m for m in messages}
        if not wanted:
            return []
        core = self._core
        qt = subject_token(queue)
        raws = await asyncio.gather(
            *(self._last(core.dlq, f"{core.root}.dlq.{qt}.{subject_token(i)}") for i in wanted)
        )
        moved: list[str] = []  # live again: sent, and their dead letters removed
        try:
            with stopped_part_way(moved):
                for raw in raws:
                    if raw is None:
                        continue
                    dead = dead_letter_from_raw(raw, queue)
                    msg = wanted.pop(dead.id, None)
                    if msg is None:
                        continue
                    if not await self._send_back(queue, msg, raw["seq"]):
                        # An earlier replay sent this letter and failed to remove it: its
                        # task ran then, or waits. The leftover letter goes; the id is
                        # not reported, so the caller takes back its record's restart.
                        await self._drop_dead(int(raw["seq"]))
                        continue
                    # Sent: live again, even if removing the dead letter fails now.
                    moved.append(dead.id)
                    if not await self._drop_dead(int(raw["seq"])):
                        moved.pop()  # another replay moved it: this send was its message
        finally:
            await self._notify(queue, len(moved))
        return moved

    async def _resend(self, publish: Callable[[], Awaitable[PubAck]]) -> bool:
        """Run ``publish`` (one deduplicated JetStream publish) until the server answers;
        False if its first answer says it held the message id already (sent by an earlier
        call, not by this one).

        A publish without an answer may have been stored. Sent again with the same
        ``Nats-Msg-Id`` within the stream's duplicate window, it is stored at most once and
        its answer says so (a duplicate then is this call's own send); past the window, a
        second send could store a second copy, so the last send starts before it closes.
        A definite refusal (the server answered with an error) or a closed connection is
        raised at once.
        """
        window_ends = time.monotonic() + self._core.dedup_window - 2 * API_TIMEOUT
        unanswered = False
        while True:
            try:
                ack = await self._conn.call(publish())
                return unanswered or not ack.duplicate
            except BrokerError as exc:
                if not _unanswered(exc.__cause__) or time.monotonic() >= window_ends:
                    raise
            unanswered = True
            await asyncio.sleep(_RESEND_PAUSE)

    # -- operator listings ---------------------------------------------------------------
    async def known_queues(self) -> list[str]:
        """Queues with consumers on the work stream (every declared queue has ten)."""
        core = self._core
        names: set[str] = set()
        offset = 0
        while True:
            try:
                resp = await self._conn.api(f"CONSUMER.LIST.{core.work}", {"offset": offset})
            except NotFoundError:
                return []
            consumers = resp.get("consumers") or []
            for info in consumers:
                subject = str(info.get("config", {}).get("filter_subject", ""))
                parts = subject.split(".")
                if len(parts) >= 3 and parts[-2] == "p9":
                    with contextlib.suppress(ValueError):
                        names.add(untoken(parts[-3]))
            offset += len(consumers)
            if not consumers or offset >= int(resp.get("total", 0)):
                return sorted(names)

    async def paused_queues(self) -> set[str]:
        """Queues whose pause flag is set (read from KV, not from the cache)."""
        paused = set()
        for queue in await self.known_queues():
            self._paused.pop(queue, None)
            if await self.is_paused(queue):
                paused.add(queue)
        return paused

    async def browse(self, queue: str, state: str, offset: int, limit: int) -> list[Waiting]:
        """Ready messages (highest level first, from each consumer's delivered position) or
        scheduled ones (in the order they were stored). Running ones cannot be listed:
        JetStream counts a consumer's pending acks but does not say which messages."""
        if state == "running":
            raise self.unsupported("list running tasks (it only counts them)")
        core = self._core
        qt = subject_token(queue)
        if state == "scheduled":
            raws = await core.scan(core.delays, f"{core.root}.d.{qt}.*", 1, offset + limit)
            return [_waiting(raw, queue, state) for raw in raws[offset:]]
        out: list[Waiting] = []
        skip = offset
        for level, info in zip(LEVELS, await self._level_infos(queue), strict=True):
            start = int(info["delivered"]["stream_seq"]) + 1
            want = skip + limit - len(out)
            raws = await core.scan(core.work, f"{core.root}.q.{qt}.p{level}.*", start, want)
            taken = raws[skip:]
            skip = max(0, skip - len(raws))
            out += [_waiting(raw, queue, state, level) for raw in taken]
            if len(out) >= limit:
                break
        return out[:limit]

    async def dead_page(
        self, queue: str, position: int, limit: int
    ) -> tuple[list[tuple[int, DeadLetter]], int | None]:
        """Dead letters from stream sequence ``position`` on (direct gets by sequence)."""
        core = self._core
        subject = f"{core.root}.dlq.{subject_token(queue)}.*"
        raws = await core.scan(core.dlq, subject, max(1, position), limit + 1)
        more = len(raws) > limit
        raws = raws[:limit]
        page = [(int(raw["seq"]), dead_letter_from_raw(raw, queue)) for raw in raws]
        return page, (int(raws[-1]["seq"]) + 1 if more else None)

    async def _last(self, stream: str, subject: str) -> dict[str, Any] | None:
        try:
            resp = await self._conn.api(f"STREAM.MSG.GET.{stream}", {"last_by_subj": subject})
        except NotFoundError:
            return None
        message: dict[str, Any] = resp["message"]
        return message

    async def dead_by_ids(self, queue: str, ids: Sequence[str]) -> list[DeadLetter]:
        """The dead letters with ``ids`` (one direct get by subject each)."""
        core = self._core
        qt = subject_token(queue)
        raws = await asyncio.gather(
            *(self._last(core.dlq, f"{core.root}.dlq.{qt}.{subject_token(i)}") for i in ids)
        )
        return [dead_letter_from_raw(raw, queue) for raw in raws if raw is not None]

    async def discard_dead(self, queue: str, ids: Sequence[str]) -> list[str]:
        """Delete these dead letters by sequence, one at a time (a failure after the
        first raises :class:`StoppedPartWay` with those deleted)."""
        core = self._core
        qt = subject_token(queue)
        gone: list[str] = []
        with stopped_part_way(gone):
            for mid in dict.fromkeys(ids):
                subject = f"{core.root}.dlq.{qt}.{subject_token(mid)}"
                while (raw := await self._last(core.dlq, subject)) is not None:
                    if not await self._drop_dead(int(raw["seq"])):
                        break
                    if mid not in gone:
                        gone.append(mid)
        return gone

    async def add_dead(self, letters: Sequence[DeadLetter]) -> None:
        """Publish ``letters`` to the dead-letter stream."""
        core = self._core
        js = self._conn.client().jetstream()
        for d in letters:
            headers = {
                "Tf-Reason": d.reason,
                "Tf-Error": json.dumps(d.error),
                "Tf-Count": str(d.delivery_count),
                "Tf-Pri": str(int(d.extra.get("priority", 0))),
                "Tf-Max": str(int(d.extra.get("max_deliveries", 1))),
                "Tf-At": repr(float(d.failed_at)),
            }
            subject = f"{core.root}.dlq.{subject_token(d.queue)}.{subject_token(d.id)}"
            await self._conn.call(js.publish(subject, d.body, headers=headers))

    async def present(self, queue: str, ids: Sequence[str]) -> set[str]:
        """Ids with a stored message of ``queue``: dead, delayed or waiting at any level."""
        core = self._core
        qt = subject_token(queue)
        found: set[str] = set()
        for mid in ids:
            token = subject_token(mid)
            subjects = [
                (core.dlq, f"{core.root}.dlq.{qt}.{token}"),
                (core.delays, f"{core.root}.d.{qt}.{token}"),
                *((core.work, f"{core.root}.q.{qt}.p{level}.{token}") for level in LEVELS),
            ]
            hits = await asyncio.gather(*(self._last(st, sub) for st, sub in subjects))
            if any(hit is not None for hit in hits):
                found.add(mid)
        return found

    async def _dead_scan(self, queue: str, limit: int) -> list[dict[str, Any]]:
        """The stored dead letters of ``queue``, oldest first."""
        core = self._core
        return await core.scan(core.dlq, f"{core.root}.dlq.{subject_token(queue)}.*", 1, limit)

    async def _drop_dead(self, seq: int) -> bool:
        """Delete one dead letter by sequence; False if another caller removed it first."""
        try:
            resp = await self._conn.api(f"STREAM.MSG.DELETE.{self._core.dlq}", {"seq": seq})
        except NotFoundError:
            return False
        except BrokerError as exc:
            if "no message found" in str(exc):
                return False
            raise
        return bool(resp.get("success"))


def _id_of(subject: str) -> str:
    """The message id in the last token of a work or delay subject."""
    token = subject.rsplit(".", 1)[-1]
    try:
        return untoken(token)
    except ValueError:
        return token


def dead_letter_from_raw(raw: dict[str, Any], queue: str) -> DeadLetter:
    """A :class:`DeadLetter` from a ``STREAM.MSG.GET`` reply of the dead-letter stream."""
    headers = raw_headers(raw)
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


def _waiting(raw: dict[str, Any], queue: str, state: str, level: int | None = None) -> Waiting:
    """A stored work or delay message as a :class:`Waiting`."""
    headers = raw_headers(raw)
    eta = headers.get("Tf-Eta")
    priority = level if level is not None else int(headers.get("Tf-Pri", "0"))
    return Waiting(
        _id_of(str(raw["subject"])),
        queue,
        base64.b64decode(raw.get("data") or ""),
        state,
        priority,
        float(eta) if eta and state == "scheduled" else None,
        0,
        int(headers.get("Tf-Max", "1")),
    )
