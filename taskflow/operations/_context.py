"""What every operation shares: the kernel, the actor, the broker's admin side, queue
checks and the audit trail."""

from __future__ import annotations

import base64
import binascii
import json
import logging
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from .. import codec
from ..brokers.base import BrokerAdmin
from ..brokers.base import DeadLetter as BrokerDeadLetter
from ..clock import utc
from ..errors import (
    AuditNotWritten,
    BrokerError,
    ConfigError,
    PayloadError,
    UnknownQueue,
    Unsupported,
)
from ..kernel import Kernel
from ..options import check_name
from ..urls import mask_url
from .types import DeadLetter

__all__ = [
    "AUDIT_IDS",
    "Context",
    "check_limit",
    "decode_cursor",
    "encode_cursor",
    "to_datetime",
    "view",
]

AUDIT_IDS = 100
"""Ids an audit entry lists (its ``count`` says how many there were)."""

audit_log = logging.getLogger("taskflow.audit")


def check_limit(limit: object) -> int:
    """``limit`` of a listing: a whole number, at least 1."""
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ConfigError(f"limit must be a whole number, at least 1, got {limit!r}")
    return limit


class Context:
    """One admin's view of the app: kernel, actor, broker admin, audit."""

    def __init__(self, kernel: Kernel, actor: str) -> None:
        """Operations on ``kernel``'s backends, audited as done by ``actor``."""
        self.kernel = kernel
        self.actor = check_name(actor, "an actor")  # named by the audit trail and its log

    async def broker(self) -> BrokerAdmin:
        """The broker's admin side (connecting on first use)."""
        await self.kernel.connect()
        broker = self.kernel.broker
        if not isinstance(broker, BrokerAdmin):
            raise ConfigError(f"broker {mask_url(broker.url)!r} has no admin operations")
        return broker

    async def queue_names(self) -> list[str]:
        """The queues the broker knows, sorted. A broker that cannot list its queues
        (RabbitMQ) is asked of each queue this app names (its default queue, its tasks',
        the keys of its weights and limits) and each its workers listen on (their heartbeats)."""
        broker = await self.broker()
        try:
            return await broker.known_queues()
        except Unsupported:
            named = await self._named_queues()
        return [q for q in sorted(named) if await broker.has_queue(q)]

    async def _named_queues(self) -> set[str]:
        settings = self.kernel.settings
        named = {settings.default_queue, *settings.queue_weights, *settings.queue_limits}
        registry = self.kernel.registry
        named.update(q for q in (registry[name].options.queue for name in registry) if q)
        for entry in await self.kernel.results.workers():
            named.update(str(q) for q in entry.get("queues") or ())
        return named

    async def check(self, queue: str) -> BrokerAdmin:
        """The broker, once ``queue`` is known to it (UnknownQueue otherwise)."""
        broker = await self.broker()
        if await broker.has_queue(queue):
            return broker
        try:
            known = f" (known: {', '.join(await broker.known_queues()) or 'none'})"
        except Unsupported:
            known = ""  # RabbitMQ: it was asked of this one queue
        raise UnknownQueue(f"no queue {queue!r}{known}")

    async def scope(self, queue: str | None) -> list[str]:
        """``[queue]`` (checked), or every known queue when ``queue`` is None."""
        if queue is None:
            return await self.queue_names()
        await self.check(queue)
        return [queue]

    async def record(
        self,
        action: str,
        target: str,
        ids: Sequence[str],
        *,
        count: int | None = None,
        details: dict[str, Any] | None = None,
        before: bool = False,
        on_queue: bool = True,
    ) -> None:
        """Write the audit entry of an applied action.

        A store that refuses the entry (a full Redis, say) raises :class:`AuditNotWritten`,
        which says that the action took effect, and the entry goes to the log instead: an
        operator told only "error" would run a purge or a replay again. With ``before``
        (an action done only once it is audited) the store's error is raised as it is.
        ``on_queue``: ``target`` is a queue (``"*"``: every queue), as it is for the
        operations API's own actions; else it is named as given (``Admin.record``)."""
        await self.kernel.connect()
        n = len(ids) if count is None else count
        entry = {
            "at": self.kernel.clock.time(),
            "actor": self.actor,
            "action": action,
            "target": target,
            "count": n,
            "ids": list(ids[:AUDIT_IDS]),
            "details": details or {},
        }
        try:
            await self.kernel.results.add_audit(
                entry, retention=self.kernel.settings.audit_retention
            )
        except BrokerError as exc:
            if before:
                raise
            # Ids, names and counts only: an audit entry holds no arguments.
            audit_log.error(
                "audit entry not written (%s), logged here instead: %s",
                exc,
                json.dumps(entry, sort_keys=True, default=str),
            )
            if not on_queue:
                where = repr(target)
            else:
                where = "every queue" if target == "*" else f"queue {target!r}"
            done = f" ({n:,} task{'' if n == 1 else 's'})" if n else ""
            raise AuditNotWritten(
                f"{action} on {where} took effect{done} and is not undone, but the result "
                f"store refused its audit entry; the entry is in the log (taskflow.audit) "
                f"instead: {exc}",
                action=action,
                target=target,
                count=n,
            ) from exc


def to_datetime(value: float | None) -> datetime | None:
    """Epoch seconds as an aware UTC datetime (None and 0 stay None)."""
    return utc(float(value)) if value else None


def view(letter: BrokerDeadLetter) -> DeadLetter:
    """A broker dead letter as an operator sees it (the task name and attempt decoded)."""
    try:
        env = codec.decode_envelope(letter.body)
        task, attempts = env.task, env.attempt
    except PayloadError:
        task, attempts = "", 0
    return DeadLetter(
        task_id=letter.id,
        task=task,
        queue=letter.queue,
        reason=letter.reason,
        error=letter.error,
        attempts=attempts,
        dead_at=to_datetime(letter.failed_at),
    )


def encode_cursor(queue: str, position: int) -> str:
    """An opaque cursor: where the next page of dead letters starts."""
    raw = json.dumps({"q": queue, "p": position}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[str, int]:
    """The queue and position of a cursor (ConfigError if it is not one of ours)."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        doc = json.loads(raw)
        return str(doc["q"]), int(doc["p"])
    except (binascii.Error, ValueError, KeyError, TypeError):
        raise ConfigError(f"not a dead-letter cursor: {cursor[:40]!r}") from None
