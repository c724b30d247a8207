"""Names, headers and the delay cascade of the AMQP broker (no I/O here).

Per task queue ``q`` under a prefix ``p``:

* ``p.q.<q>``: the work queue, classic and durable, ``x-max-priority: 9``.
* ``p.dead.<q>``: the dead-letter queue (FIFO), one message per dead letter with its
  reason, error, time and delivery count in headers.
* ``p.delay.<q>.<level>``: the delay levels. Level ``k`` (0-30) holds every message for
  exactly ``2**k`` ms (``x-message-ttl``); the levels ``t0``, ``t1``, ... hold 2**31 ms
  (about 24.8 days) each. A message that expires leaves through its level's dead-letter
  exchange ``p.after.<level>`` (a headers exchange shared by every queue of the prefix),
  which routes it by the message's own headers to its next level or to its work queue.

A message due in ``d`` ms goes first through ``d // 2**31`` top levels, then through the
levels of the set bits of the rest, largest first: at most 31 + ``d // 2**31`` hops, each
level a FIFO queue with one fixed TTL, so a long delay never holds up a short one (RabbitMQ
expires only the head of a queue, and in a queue with one TTL the head is always the first
due). The header ``tf-a<level>`` of a message names where it goes after ``<level>``.
"""

from __future__ import annotations

import hashlib
from typing import Any, Final

__all__ = [
    "LEVEL_BITS",
    "MAX_DELAY_MS",
    "TOP_LEVELS",
    "TOP_MS",
    "Names",
    "cascade",
    "level_ttl",
]

LEVEL_BITS: Final = 31
"""Levels ``0`` .. ``30`` hold ``2**k`` ms."""
TOP_MS: Final = 1 << LEVEL_BITS
"""What one top level (``t0``, ``t1``, ...) holds: 2**31 ms, about 24.8 days."""
TOP_LEVELS: Final = 128
"""Top levels at most: delays up to 128 * 24.8 days, about 8.7 years."""
MAX_DELAY_MS: Final = TOP_LEVELS * TOP_MS + TOP_MS - 1
MAX_NAME_BYTES: Final = 255
"""The longest queue name AMQP carries (a short string)."""

# Header names (``tf-`` prefix; ``x-`` headers belong to RabbitMQ).
H_ID: Final = "tf-id"
H_MAX: Final = "tf-max"
H_COUNT: Final = "tf-count"
"""Deliveries already made of this message (lost, or handed back by a lease)."""
H_TASK: Final = "tf-task"
H_QUEUE: Final = "tf-q"
H_DUE: Final = "tf-due"
"""Epoch milliseconds a scheduled message is due (read by sweeps that move it)."""
H_REASON: Final = "tf-reason"
H_ERROR: Final = "tf-error"
H_FAILED: Final = "tf-failed-at"
H_PRIORITY: Final = "tf-priority"


def level_ttl(level: str) -> int:
    """Milliseconds a message stays in ``level``."""
    return TOP_MS if level.startswith("t") else 1 << int(level)


def cascade(delay_ms: int) -> list[str]:
    """The levels a message due in ``delay_ms`` passes through, in order (empty: due now)."""
    delay_ms = max(0, min(int(delay_ms), MAX_DELAY_MS))
    tops, rest = divmod(delay_ms, TOP_MS)
    path = [f"t{i}" for i in range(tops)]
    path += [str(k) for k in range(LEVEL_BITS - 1, -1, -1) if rest >> k & 1]
    return path


class Names:
    """The AMQP names of one prefix."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.control = f"{prefix}.control"
        """Fanout exchange: control commands and pause/resume notices."""

    def work(self, queue: str) -> str:
        return _fit(f"{self.prefix}.q.", queue, "")

    def dead(self, queue: str) -> str:
        return _fit(f"{self.prefix}.dead.", queue, "")

    def level(self, queue: str, level: str) -> str:
        return _fit(f"{self.prefix}.delay.", queue, f".{level}")

    def after(self, level: str) -> str:
        return f"{self.prefix}.after.{level}"

    def paused_marker(self, queue: str) -> str:
        """A queue whose existence means ``queue`` is paused (survives restarts)."""
        return _fit(f"{self.prefix}.paused.", queue, "")

    def route(self, queue: str, path: list[str]) -> tuple[str, dict[str, Any]]:
        """(routing key on the default exchange, routing headers) for ``path``."""
        if not path:
            return self.work(queue), {}
        headers: dict[str, Any] = {H_QUEUE: queue}
        for here, there in zip(path, [*path[1:], "w"], strict=True):
            headers[f"tf-a{here}"] = there
        return self.level(queue, path[0]), headers

    def bindings(self, queue: str, path: list[str]) -> list[tuple[str, str, dict[str, Any]]]:
        """(exchange, destination queue, binding arguments) that ``path`` needs."""
        out: list[tuple[str, str, dict[str, Any]]] = []
        if not path:
            return out
        for here, there in zip(path, [*path[1:], "w"], strict=True):
            dest = self.work(queue) if there == "w" else self.level(queue, there)
            args = {"x-match": "all", H_QUEUE: queue, f"tf-a{here}": there}
            out.append((self.after(here), dest, args))
        return out


def _fit(head: str, queue: str, tail: str) -> str:
    """``head + queue + tail``, or with a hash of ``queue`` in its place where that name
    is longer than AMQP carries. Only names the server refused are hashed, so no name that
    worked before changes; messages carry the queue's own name in their headers."""
    name = f"{head}{queue}{tail}"
    if len(name.encode()) <= MAX_NAME_BYTES:
        return name
    return f"{head}={hashlib.sha1(queue.encode()).hexdigest()}{tail}"
