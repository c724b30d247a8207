"""The SQLite broker's statements: plain functions of a connection, run by
:class:`~taskflow._sqlite.connection.Database` inside a short write transaction (shared with
the writes queued meanwhile; a function that raises has its changes undone alone).

A message row is ``waiting`` (ready once ``due`` has passed: a delay is just a later
``due``) or ``inflight`` (``due`` is then its lease deadline and ``token`` fences its
settlement). A message ready when it is published or handed back is stored with ``due = 0``:
the ``messages_due`` index holds only the rows with ``due > 0`` (leases and later due
times), so publishing a ready message updates one index fewer; the queries on ``due`` name
``due > 0`` so that they can use that partial index. Ready messages are served by priority
(9 first), then in publish order (``seq``). Expired leases are reclaimed by the next fetch:
delivered again, or dead-lettered as ``worker_lost`` once ``max_deliveries`` ran out.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence
from typing import Any

from .._sqlite.connection import data_version
from .._sqlite.records import RecordFile
from ..errors import QueueFull
from .base import DeadLetter, Message, Waiting

__all__ = [
    "TAKE_SQL",
    "Row",
    "bury",
    "cancel",
    "dead_letters",
    "declare",
    "depth",
    "insert",
    "insert_recording",
    "insert_unbounded",
    "peek",
    "purge_closing",
    "purge_ids",
    "reclaim",
    "requeue",
    "requeue_started",
    "set_paused",
    "settle",
    "settle_recording",
    "take",
    "take_starting",
]

Row = tuple[str, str, bytes, int, int]
"""A leased message: ``(id, queue, body, priority, delivery_count)``."""

_INSERT = (
    "INSERT OR REPLACE INTO messages (id, queue, body, priority, max_deliveries, deliveries,"
    " state, due, token) VALUES (?, ?, ?, ?, ?, 0, 'waiting', ?, 0)"
)
# One message into a queue without a bound, in one statement: the bound check and the
# insert are atomic without a transaction around them (nothing is inserted, rowcount 0,
# when the queue has a bound: the caller then takes the checked path).
_INSERT_UNBOUNDED = (
    "INSERT OR REPLACE INTO messages (id, queue, body, priority, max_deliveries, deliveries,"
    " state, due, token) SELECT ?1, ?2, ?3, ?4, ?5, 0, 'waiting', ?6, 0 WHERE NOT EXISTS"
    " (SELECT 1 FROM queues WHERE name = ?2 AND max_length IS NOT NULL)"
)
_FENCE = "id = ? AND token = ? AND state = 'inflight'"
# Ready messages in delivery order. The index is named: it yields the rows in the ORDER BY
# order, so the scan stops after LIMIT rows; left to itself the planner may pick
# messages_due (state, due) and sort every waiting message of the file on each fetch.
_READY = (
    "FROM messages INDEXED BY messages_ready WHERE queue = ? AND state = 'waiting'"
    " AND due <= ? ORDER BY priority DESC, seq LIMIT ?"
)
TAKE_SQL = "SELECT seq, id, body, priority, deliveries " + _READY


def _check_room(conn: sqlite3.Connection, messages: Sequence[Message]) -> None:
    wanted: dict[str, int] = {}
    for msg in messages:
        wanted[msg.queue] = wanted.get(msg.queue, 0) + 1
    bounds = dict(conn.execute("SELECT name, max_length FROM queues WHERE max_length IS NOT NULL"))
    for name, count in wanted.items():
        bound = bounds.get(name)
        if bound is None:
            continue
        (size,) = conn.execute(
            "SELECT count(*) FROM messages WHERE queue = ? AND state = 'waiting'", (name,)
        ).fetchone()
        if size + count > bound:
            raise QueueFull(f"queue {name!r} is full ({size}/{bound}); nothing was enqueued")


def insert(conn: sqlite3.Connection, messages: Sequence[Message], now: float) -> None:
    """Store all of ``messages`` (an id already stored is replaced) or none (QueueFull)."""
    _check_room(conn, messages)
    rows = [
        (
            m.id,
            m.queue,
            bytes(m.body),
            m.priority,
            max(1, m.max_deliveries),
            m.eta if m.eta is not None and m.eta > now else 0.0,  # 0: ready now
        )
        for m in messages
    ]
    if len(rows) == 1:
        conn.execute(_INSERT, rows[0])
    else:
        conn.executemany(_INSERT, rows)


def insert_recording(
    conn: sqlite3.Connection,
    messages: Sequence[Message],
    now: float,
    records: RecordFile,
    items: Sequence[tuple[str, Mapping[str, Any]]],
) -> None:
    """:func:`insert`, with the queued task records ``items`` created in the same
    transaction (as ``ResultStore.create_many``, without a time to live): both or neither."""
    insert(conn, messages, now)
    if items:
        records.create(conn, items, None, now)


def insert_unbounded(conn: sqlite3.Connection, m: Message, now: float) -> bool:
    """Store ``m`` in one statement if its queue has no bound (an id already stored is
    replaced); False, with nothing stored, when it has one (use :func:`insert`)."""
    due = m.eta if m.eta is not None and m.eta > now else 0.0  # 0: ready now
    row = (m.id, m.queue, bytes(m.body), m.priority, max(1, m.max_deliveries), due)
    return conn.execute(_INSERT_UNBOUNDED, row).rowcount == 1


def bury(
    conn: sqlite3.Connection,
    where: str,
    args: tuple[Any, ...],
    *,
    reason: str,
    error: str | None,
    now: float,
) -> list[DeadLetter]:
    """Move the message rows matching ``where`` to the dead letters; what was moved."""
    rows = conn.execute(
        "SELECT id, queue, body, deliveries, priority, max_deliveries FROM messages WHERE " + where,
        args,
    ).fetchall()
    conn.executemany(
        "INSERT INTO dead_letters (id, queue, body, reason, error, failed_at, deliveries,"
        " priority, max_deliveries) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [(r[0], r[1], r[2], reason, error, now, r[3], r[4], r[5]) for r in rows],
    )
    conn.execute("DELETE FROM messages WHERE " + where, args)
    return [
        DeadLetter(r[0], r[1], bytes(r[2]), reason, error, now, r[3], _extra(r[4], r[5]))
        for r in rows
    ]


def _extra(priority: int, max_deliveries: int) -> dict[str, Any]:
    return {"priority": priority, "max_deliveries": max_deliveries}


def reclaim(conn: sqlite3.Connection, now: float) -> list[DeadLetter]:
    """Hand back deliveries whose lease ran out; bury those out of deliveries."""
    expired = "SELECT 1 FROM messages WHERE state = 'inflight' AND due > 0 AND due <= ? LIMIT 1"
    if conn.execute(expired, (now,)).fetchone() is None:  # the common case: one lookup
        return []
    lost = bury(
        conn,
        "state = 'inflight' AND due > 0 AND due <= ? AND deliveries >= max_deliveries",
        (now,),
        reason="worker_lost",
        error="lease expired",
        now=now,
    )
    conn.execute(
        "UPDATE messages SET state = 'waiting', token = 0, due = 0 "
        "WHERE state = 'inflight' AND due > 0 AND due <= ?",
        (now,),
    )
    return lost


def take(
    conn: sqlite3.Connection,
    queues: Sequence[str],
    limit: int,
    lease: tuple[float, float, int],
) -> tuple[list[Row], list[DeadLetter], float | None, int]:
    """Lease up to ``limit`` ready messages; ``lease`` is ``(now, seconds, token)``.

    Returns the rows, the messages buried as lost, and, when nothing was taken, when the
    next one is due (or a lease runs out) and ``data_version`` (None and 0 otherwise).
    """
    now, length, token = lease
    lost = reclaim(conn, now)
    paused = {row[0] for row in conn.execute("SELECT name FROM queues WHERE paused = 1")}
    out: list[Row] = []
    for name in queues:
        if name in paused or len(out) >= limit:
            continue
        rows = conn.execute(TAKE_SQL, (name, now, limit - len(out))).fetchall()
        if rows:  # one statement leases them all
            conn.execute(
                "UPDATE messages SET state = 'inflight', deliveries = deliveries + 1, due = ?,"
                f" token = ? WHERE seq IN ({','.join('?' * len(rows))})",
                (now + length, token, *(r[0] for r in rows)),
            )
        out.extend((r[1], name, bytes(r[2]), r[3], r[4] + 1) for r in rows)
    if out:  # the caller waits only when nothing was taken
        return out, lost, None, 0
    return out, lost, _next_due(conn, queues, paused, now), data_version(conn)


def take_starting(
    conn: sqlite3.Connection,
    queues: Sequence[str],
    limit: int,
    lease: tuple[float, float, int],
    marking: tuple[RecordFile, int] | None,
) -> tuple[list[Row], list[DeadLetter], float | None, int, list[bool]]:
    """:func:`take`, and, with ``marking`` (the store's writes and ``start``) when it took
    at most ``start`` messages, their task records marked ``running`` in the same
    transaction (those that exist and are not terminal); whether each was (an empty list:
    none was looked at)."""
    rows, lost, next_due, version = take(conn, queues, limit, lease)
    if marking is None or not rows or len(rows) > marking[1]:
        return rows, lost, next_due, version, []
    marks = marking[0].start(conn, [row[0] for row in rows], lease[0])
    return rows, lost, next_due, version, marks


def _next_due(
    conn: sqlite3.Connection, queues: Sequence[str], paused: set[str], now: float
) -> float | None:
    (lease_end,) = conn.execute(
        "SELECT min(due) FROM messages WHERE state = 'inflight' AND due > 0"
    ).fetchone()
    candidates = [lease_end] if lease_end is not None else []
    for name in queues:
        if name not in paused:
            (due,) = conn.execute(
                "SELECT min(due) FROM messages WHERE queue = ? AND state = 'waiting' AND due > 0",
                (name,),
            ).fetchone()
            if due is not None:
                candidates.append(due)
    return min(candidates) if candidates else None


def settle(
    conn: sqlite3.Connection, fence: tuple[str, int], action: str, now: float, extra: dict[str, Any]
) -> bool:
    """Apply ``action`` to the delivery ``fence`` (its id and lease token) names; False
    if that lease was lost."""
    sql: str
    args: tuple[Any, ...]
    if action == "touch":
        sql, args = f"UPDATE messages SET due = ? WHERE {_FENCE}", (now + extra["lease"], *fence)
    elif action == "ack":
        sql, args = f"DELETE FROM messages WHERE {_FENCE}", fence
    elif action == "requeue":
        sql = (
            "UPDATE messages SET state = 'waiting', token = 0, due = 0, "
            f"deliveries = deliveries - 1 WHERE {_FENCE}"
        )
        args = fence
    elif action == "retry":
        sql = (
            "UPDATE messages SET state = 'waiting', token = 0, due = ?, body = ?, "
            f"deliveries = 0, max_deliveries = ? WHERE {_FENCE}"
        )
        due = now + extra["delay"] if extra["delay"] > 0 else 0.0
        args = (due, bytes(extra["body"]), max(1, extra["max_deliveries"]), *fence)
    else:
        buried = bury(
            conn, _FENCE, fence, reason=extra["reason"], error=extra.get("error"), now=now
        )
        return bool(buried)
    return conn.execute(sql, args).rowcount == 1


Recording = tuple[RecordFile, str, Mapping[str, Any], float | None]
"""A task record's write in a settle: the store's writes, the task id, the changes and
their time to live."""


def settle_recording(
    conn: sqlite3.Connection,
    fence: tuple[str, int],
    now: float,
    act: tuple[str | None, dict[str, Any]],
    recording: Recording,
) -> tuple[list[dict[str, Any] | None], bool]:
    """The task's record written, then ``act`` (:func:`settle`'s action and its extra
    arguments; the action None: the record only) on the delivery, in one transaction. A
    ``retry`` is made only if the record was written (a task whose record became terminal
    while it ran does not come back). The merged record (``[None]``: it was terminal, left
    as it was) and whether the action held; the record is written whether or not the
    lease still holds."""
    action, extra = act
    records, task_id, changes, ttl = recording
    merged = records.update(conn, [(task_id, changes)], ttl, now)
    if action is None:
        return merged, True
    if action == "retry" and merged[0] is None:
        return merged, False
    return merged, settle(conn, fence, action, now, extra)


def requeue_started(
    conn: sqlite3.Connection, fence: tuple[str, int], now: float, records: RecordFile
) -> bool:
    """Hand back, uncounted, a delivery whose record the fetch marked ``running``, and mark
    that record ``queued`` again, in one transaction (if the lease still holds)."""
    held = settle(conn, fence, "requeue", now, {})
    if held:
        records.unstart(conn, fence[0], now)
    return held


def cancel(conn: sqlite3.Connection, mid: str, queue: str) -> bool:
    """Remove a ready or scheduled message."""
    sql = "DELETE FROM messages WHERE id = ? AND queue = ? AND state = 'waiting'"
    return conn.execute(sql, (mid, queue)).rowcount == 1


def declare(conn: sqlite3.Connection, queue: str, max_length: int | None) -> None:
    """Create ``queue`` with its bound."""
    conn.execute(
        "INSERT INTO queues (name, max_length) VALUES (?, ?) "
        "ON CONFLICT (name) DO UPDATE SET max_length = excluded.max_length",
        (queue, max_length),
    )


def set_paused(conn: sqlite3.Connection, queue: str, paused: bool) -> None:
    """Pause or resume ``queue``."""
    conn.execute(
        "INSERT INTO queues (name, paused) VALUES (?, ?) "
        "ON CONFLICT (name) DO UPDATE SET paused = excluded.paused",
        (queue, int(paused)),
    )


def depth(
    conn: sqlite3.Connection, queue: str, now: float
) -> tuple[dict[str, int], list[DeadLetter]]:
    """Counts by state (after reclaiming lost leases, which are returned)."""
    lost = reclaim(conn, now)
    (ready, scheduled, inflight) = conn.execute(
        "SELECT coalesce(sum(state = 'waiting' AND due <= ?), 0),"
        " coalesce(sum(state = 'waiting' AND due > ?), 0), coalesce(sum(state = 'inflight'), 0)"
        " FROM messages WHERE queue = ?",
        (now, now, queue),
    ).fetchone()
    (dead,) = conn.execute("SELECT count(*) FROM dead_letters WHERE queue = ?", (queue,)).fetchone()
    counts = {"ready": ready, "scheduled": scheduled, "inflight": inflight, "dead": dead}
    return counts, lost


def peek(conn: sqlite3.Connection, queue: str, limit: int, now: float) -> list[bytes]:
    """Next ready bodies in delivery order."""
    rows = conn.execute("SELECT body " + _READY, (queue, now, limit))
    return [bytes(r[0]) for r in rows]


def purge_ids(conn: sqlite3.Connection, queue: str, scheduled: bool, now: float) -> list[str]:
    """Drop ready (and scheduled) messages; their ids."""
    where, args = _purgeable(queue, scheduled, now)
    ids = [r[0] for r in conn.execute(f"SELECT id FROM messages WHERE {where}", args)]
    conn.execute(f"DELETE FROM messages WHERE {where}", args)
    return ids


def purge_closing(
    conn: sqlite3.Connection,
    queue: str,
    batch: tuple[bool, int],
    now: float,
    close: tuple[RecordFile, Mapping[str, Any], float | None],
) -> list[str]:
    """Drop up to ``limit`` ready (and, with ``scheduled``, scheduled) messages, oldest
    first (``batch``: the two), and close their task records in the same transaction
    (``close``: the store's writes, the changes and their time to live; only records that
    exist and are not terminal change); the ids dropped."""
    taken = purgeable(conn, queue, batch, now)
    conn.executemany("DELETE FROM messages WHERE seq = ?", [(seq,) for seq, _ in taken])
    ids = [mid for _, mid in taken]
    records, changes, ttl = close
    records.close(conn, [(mid, changes) for mid in ids], ttl, now)
    return ids


def purgeable(
    conn: sqlite3.Connection, queue: str, batch: tuple[bool, int], now: float
) -> list[tuple[int, str]]:
    """``(seq, id)`` of up to ``limit`` messages a purge would drop, oldest first
    (``batch``: ``scheduled`` and ``limit``), nothing changed."""
    scheduled, limit = batch
    where, args = _purgeable(queue, scheduled, now)
    rows = conn.execute(
        f"SELECT seq, id FROM messages WHERE {where} ORDER BY seq LIMIT ?", (*args, limit)
    )
    return [(int(seq), str(mid)) for seq, mid in rows]


def purge_listed(
    conn: sqlite3.Connection,
    queue: str,
    listed: Sequence[tuple[int, str]],
    scheduled: bool,
    now: float,
) -> list[str]:
    """Drop the ``listed`` messages (from :func:`purgeable`) that a purge would still drop
    (not leased since); the ids dropped."""
    where, args = _purgeable(queue, scheduled, now)
    dropped = []
    for seq, mid in listed:
        if conn.execute(f"DELETE FROM messages WHERE seq = ? AND {where}", (seq, *args)).rowcount:
            dropped.append(mid)
    return dropped


def _purgeable(queue: str, scheduled: bool, now: float) -> tuple[str, tuple[Any, ...]]:
    """The ``WHERE`` clause, with its arguments, of the messages a purge drops: the ready
    ones of ``queue`` (and, with ``scheduled``, those due later)."""
    if scheduled:
        return "queue = ? AND state = 'waiting'", (queue,)
    return "queue = ? AND state = 'waiting' AND due <= ?", (queue, now)


def dead_letters(conn: sqlite3.Connection, queue: str, limit: int) -> list[DeadLetter]:
    """The dead letters of ``queue``, oldest first."""
    rows = conn.execute(
        "SELECT id, queue, body, reason, error, failed_at, deliveries, priority, max_deliveries"
        " FROM dead_letters WHERE queue = ? ORDER BY seq LIMIT ?",
        (queue, limit),
    )
    return [
        DeadLetter(r[0], r[1], bytes(r[2]), r[3], r[4], r[5], r[6], _extra(r[7], r[8]))
        for r in rows
    ]


def replay(conn: sqlite3.Connection, queue: str, ids: Sequence[str] | None, now: float) -> int:
    """Publish dead letters again (all, or those with ``ids``) with a fresh budget."""
    rows = conn.execute(
        "SELECT seq, id, body, priority, max_deliveries FROM dead_letters WHERE queue = ? "
        "ORDER BY seq",
        (queue,),
    ).fetchall()
    wanted = set(ids) if ids is not None else None
    chosen = [r for r in rows if wanted is None or r[1] in wanted]
    insert(conn, [Message(r[1], queue, bytes(r[2]), r[3], None, r[4]) for r in chosen], now)
    conn.executemany("DELETE FROM dead_letters WHERE seq = ?", [(r[0],) for r in chosen])
    return len(chosen)


def requeue(
    conn: sqlite3.Connection, queue: str, messages: Sequence[Message], now: float
) -> list[str]:
    """Move dead letters back as ``messages`` (matched by id), each at most once."""
    dead = {r[0] for r in conn.execute("SELECT id FROM dead_letters WHERE queue = ?", (queue,))}
    chosen: dict[str, Message] = {}
    for m in messages:
        if m.id in dead and m.id not in chosen and not _is_live(conn, m.id):
            chosen[m.id] = Message(m.id, queue, m.body, m.priority, None, m.max_deliveries)
    insert(conn, list(chosen.values()), now)
    conn.executemany(
        "DELETE FROM dead_letters WHERE queue = ? AND id = ?", [(queue, mid) for mid in chosen]
    )
    return list(chosen)


def _is_live(conn: sqlite3.Connection, mid: str) -> bool:
    return conn.execute("SELECT 1 FROM messages WHERE id = ?", (mid,)).fetchone() is not None


# -- operator listings (app.admin) --------------------------------------------------------
_DEAD_COLUMNS = (
    "seq, id, queue, body, reason, error, failed_at, deliveries, priority, max_deliveries"
)


def _dead_row(r: Sequence[Any]) -> DeadLetter:
    return DeadLetter(r[1], r[2], bytes(r[3]), r[4], r[5], r[6], r[7], _extra(r[8], r[9]))


def known_queues(conn: sqlite3.Connection) -> list[str]:
    """Declared queues and queues holding messages or dead letters, sorted."""
    rows = conn.execute(
        "SELECT name FROM queues UNION SELECT DISTINCT queue FROM messages"
        " UNION SELECT DISTINCT queue FROM dead_letters ORDER BY 1"
    )
    return [r[0] for r in rows]


def paused_queues(conn: sqlite3.Connection) -> set[str]:
    """Queues paused now."""
    return {r[0] for r in conn.execute("SELECT name FROM queues WHERE paused = 1")}


def browse(
    conn: sqlite3.Connection, queue: str, state: str, window: tuple[int, int], now: float
) -> list[Waiting]:
    """A window (offset, limit) of ``queue``'s ready, scheduled or running messages."""
    offset, limit = window
    where, order, args = {
        "ready": ("state = 'waiting' AND due <= ?", "priority DESC, seq", (now,)),
        "scheduled": ("state = 'waiting' AND due > ?", "due, seq", (now,)),
        "running": ("state = 'inflight'", "seq", ()),
    }[state]
    rows = conn.execute(
        "SELECT id, body, priority, due, deliveries, max_deliveries FROM messages"
        f" WHERE queue = ? AND {where} ORDER BY {order} LIMIT ? OFFSET ?",
        (queue, *args, limit, offset),
    )
    return [
        Waiting(
            r[0],
            queue,
            bytes(r[1]),
            state,
            r[2],
            r[3] if state == "scheduled" else None,
            r[4],
            r[5],
        )
        for r in rows
    ]


def dead_page(
    conn: sqlite3.Connection, queue: str, position: int, limit: int
) -> tuple[list[tuple[int, DeadLetter]], int | None]:
    """Dead letters of ``queue`` with ``seq >= position`` (keyset paging), oldest first."""
    rows = conn.execute(
        f"SELECT {_DEAD_COLUMNS} FROM dead_letters WHERE queue = ? AND seq >= ?"
        " ORDER BY seq LIMIT ?",
        (queue, position, limit + 1),
    ).fetchall()
    more = len(rows) > limit
    rows = rows[:limit]
    return [(int(r[0]), _dead_row(r)) for r in rows], (int(rows[-1][0]) + 1 if more else None)


def dead_by_ids(conn: sqlite3.Connection, queue: str, ids: Sequence[str]) -> list[DeadLetter]:
    """The dead letters of ``queue`` with ``ids``, oldest first."""
    out: list[DeadLetter] = []
    for start in range(0, len(ids), 500):
        chunk = list(ids[start : start + 500])
        marks = ",".join("?" * len(chunk))
        rows = conn.execute(
            f"SELECT {_DEAD_COLUMNS} FROM dead_letters WHERE queue = ? AND id IN ({marks})"
            " ORDER BY seq",
            (queue, *chunk),
        )
        out += [_dead_row(r) for r in rows]
    return out


def discard_dead(conn: sqlite3.Connection, queue: str, ids: Sequence[str]) -> list[str]:
    """Delete these dead letters; the ids removed."""
    gone = [d.id for d in dead_by_ids(conn, queue, ids)]
    conn.executemany(
        "DELETE FROM dead_letters WHERE queue = ? AND id = ?", [(queue, i) for i in set(gone)]
    )
    return gone


def add_dead(conn: sqlite3.Connection, letters: Sequence[DeadLetter]) -> None:
    """File ``letters`` as dead letters."""
    conn.executemany(
        "INSERT INTO dead_letters (id, queue, body, reason, error, failed_at, deliveries,"
        " priority, max_deliveries) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            (
                d.id,
                d.queue,
                bytes(d.body),
                d.reason,
                d.error,
                d.failed_at,
                d.delivery_count,
                int(d.extra.get("priority", 0)),
                int(d.extra.get("max_deliveries", 1)),
            )
            for d in letters
        ],
    )


def present(conn: sqlite3.Connection, queue: str, ids: Sequence[str]) -> set[str]:
    """Which of ``ids`` have a message or a dead letter in ``queue``."""
    found: set[str] = set()
    for start in range(0, len(ids), 500):
        chunk = list(ids[start : start + 500])
        marks = ",".join("?" * len(chunk))
        rows = conn.execute(
            f"SELECT id FROM messages WHERE queue = ? AND id IN ({marks}) UNION "
            f"SELECT id FROM dead_letters WHERE queue = ? AND id IN ({marks})",
            (queue, *chunk, queue, *chunk),
        )
        found |= {r[0] for r in rows}
    return found
