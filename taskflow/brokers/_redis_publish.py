"""The Redis broker's publish arguments and the checks around the publish script."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..errors import QueueFull
from .base import Message

__all__ = ["MAX_BODY", "check_published", "publish_args"]

MAX_BODY = 512 * 1024 * 1024
"""Largest body: Redis' default ``proto-max-bulk-len`` (one string value)."""


def publish_args(messages: Sequence[Message]) -> list[Any]:
    """ARGV of ``publish.lua`` after the prefix and the time."""
    args: list[Any] = [len(messages)]
    for m in messages:
        eta = "" if m.eta is None else repr(float(m.eta))
        args += [m.id, m.queue, m.body, m.priority, eta, max(1, m.max_deliveries)]
    return args


def check_published(reply: Any) -> None:
    """QueueFull if the publish script refused the batch."""
    if reply:
        queue, size, limit = (x.decode() for x in reply[1:4])
        raise QueueFull(f"queue {queue!r} is full ({size}/{limit}); nothing was enqueued")
