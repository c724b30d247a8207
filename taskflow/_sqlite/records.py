"""Where an SQLite result store keeps task records, for a broker on the same file.

The broker and the result store of one app usually share a file (a ``sqlite://`` broker
derives its results URL from its own). The store hands a :class:`RecordFile` to the
broker (``ResultStore.record_location()`` and ``Broker.link_records``): its file and its
functions that write records inside a transaction the caller holds. The broker then
writes a task's record in the transaction that settles or publishes its message, so the
two commit together or not at all. The store keeps the record format: the broker only
calls these functions.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["RecordFile"]

Items = Sequence[tuple[str, Mapping[str, Any]]]


@dataclass(frozen=True)
class RecordFile:
    """An SQLite result store's file and its record writes, each called as
    ``fn(connection, ..., now)`` inside the caller's write transaction.

    * ``update(conn, items, ttl, now)``: ``ResultStore.update_many``; the merged records
      (None for one that was terminal, left as it was).
    * ``create(conn, items, ttl, now)``: ``ResultStore.create_many``; whether each was
      created (a record that exists is left as it is).
    * ``close(conn, items, ttl, now)``: ``update`` of records that exist only (a
      purge's: a task without a record gets none).
    * ``start(conn, ids, now)``: the records of ``ids`` that exist, have not expired and
      are not terminal marked ``running`` (status and ``started_at``), as a worker would
      before the body; whether each was.
    * ``unstart(conn, task_id, now)``: a record ``start`` marked, whose message went back
      unstarted, ``queued`` again (if it still says ``running``).
    * ``finished(records)``: whether any of the records ``update`` returned is terminal
      (then the writer wakes the processes waiting for results).
    * ``sweep_if_due()``: the store's periodic removal of expired entries, which its own
      writes run and a broker's record writes stand in for.
    """

    path: str
    update: Callable[
        [sqlite3.Connection, Items, float | None, float], list[dict[str, Any] | None]
    ] = field(compare=False)
    create: Callable[[sqlite3.Connection, Items, float | None, float], list[bool]] = field(
        compare=False
    )
    close: Callable[
        [sqlite3.Connection, Items, float | None, float], list[dict[str, Any] | None]
    ] = field(compare=False)
    start: Callable[[sqlite3.Connection, Sequence[str], float], list[bool]] = field(compare=False)
    unstart: Callable[[sqlite3.Connection, str, float], None] = field(compare=False)
    finished: Callable[[Sequence[Mapping[str, Any] | None]], bool] = field(compare=False)
    sweep_if_due: Callable[[], Awaitable[None]] = field(compare=False)
