"""Snapshots: waiting and dead tasks exported as JSON lines, and imported again.

The schema (one JSON object per line) is documented in ``docs/operations.md``. An import
checks the whole file before it writes anything, and skips ids that already exist.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import IO, Any

from .. import codec
from ..brokers.base import BrokerAdmin, Message, Waiting
from ..brokers.base import DeadLetter as BrokerDeadLetter
from ..errors import ConfigError, PayloadError
from ..options import name_list
from ..results.base import is_terminal
from ._context import Context
from ._dead import Partial

__all__ = ["EXPORTABLE", "ImportReport", "export", "import_"]

VERSION = 1
EXPORTABLE = ("ready", "scheduled", "dead")
_WINDOW = 500
_FIELDS: dict[str, type | tuple[type, ...]] = {
    "id": str,
    "task": str,
    "queue": str,
    "state": str,
    "priority": int,
    "attempts": int,
    "max_deliveries": int,
    "headers": dict,
}


@dataclass(frozen=True, slots=True)
class ImportReport:
    """What an import wrote (or, in a dry run, would write) and what it skipped."""

    imported: int
    skipped: int
    """Tasks whose id already exists (a record or a message): left as they are."""
    dry_run: bool = False


def _check_file(fp: Any, action: str, mode: str) -> None:
    """Refuse a path where an open file is wanted: read as lines, a path's letters would
    be taken for a snapshot's (``import_``), or fail on ``write`` (``export``)."""
    if isinstance(fp, str | bytes | os.PathLike):
        raise ConfigError(
            f"{action} takes an open text file, not a path: "
            f"with open({os.fsdecode(fp)!r}, {mode!r}) as fp: ..."
        )


# -- export ----------------------------------------------------------------------------
async def export(
    ctx: Context,
    fp: IO[str],
    queues: Sequence[str] | None,
    states: Sequence[str],
    redact: bool,
) -> int:
    """Write a snapshot of ``queues`` (all known by default) to ``fp``; how many tasks."""
    _check_file(fp, "export", "w")
    bad = [s for s in states if s not in EXPORTABLE]
    if bad or isinstance(states, str):
        raise ConfigError(f"states must be among {', '.join(EXPORTABLE)}, got {states!r}")
    broker = await ctx.broker()
    names = name_list(queues, "queues") if queues is not None else await broker.known_queues()
    for name in names:
        await ctx.check(name)
    header = {
        "taskflow_snapshot": VERSION,
        "app": ctx.kernel.settings.name,
        "created_at": ctx.kernel.clock.time(),
        "queues": names,
        "states": list(states),
        "redacted": redact,
    }
    fp.write(json.dumps(header) + "\n")
    count = 0
    for name in names:
        for state in states:
            async for window in _windows(broker, name, state):
                records = await ctx.kernel.results.get_many([m.id for m in window])
                for msg, record in zip(window, records, strict=True):
                    fp.write(json.dumps(_line(msg, state, record, redact)) + "\n")
                    count += 1
    return count


async def _windows(broker: BrokerAdmin, queue: str, state: str) -> Any:
    if state == "dead":
        pos: int | None = 0
        while pos is not None:
            page, pos = await broker.dead_page(queue, pos, _WINDOW)
            if page:
                yield [d for _, d in page]
        return
    offset = 0
    while True:
        window = await broker.browse(queue, state, offset, _WINDOW)
        if window:
            yield window
        if len(window) < _WINDOW:
            return
        offset += len(window)


def _line(
    msg: Waiting | BrokerDeadLetter, state: str, record: dict[str, Any] | None, redact: bool
) -> dict[str, Any]:
    task, attempts, headers, eta = "", 0, {}, getattr(msg, "eta", None)
    try:
        env = codec.decode_envelope(msg.body)
        task, attempts, headers = env.task, env.attempt, dict(env.headers)
        eta = eta if eta is not None else env.eta
    except PayloadError:
        pass
    if isinstance(msg, Waiting):
        priority, max_deliveries = msg.priority, msg.max_deliveries
    else:
        priority = int(msg.extra.get("priority", 0))
        max_deliveries = int(msg.extra.get("max_deliveries", 1))
    line: dict[str, Any] = {
        "id": msg.id,
        "task": task,
        "queue": msg.queue,
        "state": state,
        "priority": priority,
        "eta": eta if state == "scheduled" else None,
        "attempts": attempts,
        "max_deliveries": max_deliveries,
        "headers": headers,
    }
    if not redact:
        line["body"] = base64.b64encode(msg.body).decode()
    if isinstance(msg, BrokerDeadLetter):
        line["dead"] = {
            "reason": msg.reason,
            "error": msg.error,
            "failed_at": msg.failed_at,
            "deliveries": msg.delivery_count,
        }
    if record is not None and redact:
        record = {k: v for k, v in record.items() if k != "result"}
    line["record"] = record
    return line


# -- import ----------------------------------------------------------------------------
async def import_(ctx: Context, fp: IO[str], dry_run: bool) -> ImportReport:
    """Check every line of ``fp``, then write the tasks whose ids are new."""
    _check_file(fp, "import", "r")
    where = getattr(fp, "name", "snapshot")
    lines = list(_parse(fp, str(where)))
    broker = await ctx.broker()
    results = ctx.kernel.results
    imported = skipped = 0
    done: list[str] = []
    known = set(await broker.known_queues())
    progress = Partial(ctx, "import", None, "imported", lambda: (done, imported))
    async with progress.unless(dry_run):
        for start in range(0, len(lines), _WINDOW):
            chunk = lines[start : start + _WINDOW]
            records = await results.get_many([line["id"] for line in chunk])
            present: set[str] = set()
            for queue in {line["queue"] for line in chunk} & known:
                mine = [line["id"] for line in chunk if line["queue"] == queue]
                present |= await broker.present(queue, mine)
            fresh, kept = _to_write(chunk, records, present)
            skipped += len(chunk) - len(fresh)
            if not dry_run and fresh:
                await _write(ctx, broker, fresh, kept)
                done += [line["id"] for line in fresh][: 100 - len(done)]
            imported += len(fresh)
    if not dry_run and imported:
        await ctx.record("import", "*", done, count=imported, details={"skipped": skipped})
    return ImportReport(imported, skipped, dry_run)


def _to_write(
    chunk: list[dict[str, Any]], records: list[dict[str, Any] | None], present: set[str]
) -> tuple[list[dict[str, Any]], set[str]]:
    """The lines of ``chunk`` to write (neither a message in ``present`` nor a record of
    another task's story), and the ids among them whose record is there already."""
    fresh: list[dict[str, Any]] = []
    kept: set[str] = set()
    for line, record in zip(chunk, records, strict=True):
        if line["id"] in present or (record is not None and not _written_from(line, record)):
            continue
        if record is not None:
            kept.add(line["id"])
        fresh.append(line)
    return fresh, kept


def _written_from(line: dict[str, Any], record: dict[str, Any]) -> bool:
    """Whether ``record`` is the one importing ``line`` writes, as it was written: an
    import stopped between the records and the messages left it without its message.
    A record that has moved on since (another status or start) is another task's story,
    and the line is skipped."""
    written = line.get("record")
    if not written:
        return False
    return all(record.get(k) == written.get(k) for k in ("status", "created_at", "attempts"))


async def _write(
    ctx: Context, broker: BrokerAdmin, lines: list[dict[str, Any]], kept: set[str]
) -> None:
    """Write ``lines``: their records (but those of ``kept``, there already), then their
    messages and dead letters. The records go first: a worker that took a message whose
    record was not yet written would find no record to update."""
    for queue in {line["queue"] for line in lines}:
        await ctx.kernel.declare(queue)
    with_record = [
        (line["id"], line["record"])
        for line in lines
        if line.get("record") and line["id"] not in kept
    ]
    # A finished record (a dead task's) expires like any other; a waiting one is live.
    finished = [(i, r) for i, r in with_record if is_terminal(r)]
    waiting_records = [(i, r) for i, r in with_record if not is_terminal(r)]
    if finished:
        await ctx.kernel.results.create_many(finished, ctx.kernel.settings.result_ttl)
    if waiting_records:
        await ctx.kernel.results.create_many(waiting_records, None)
    waiting = [
        Message(
            line["id"],
            line["queue"],
            base64.b64decode(line["body"]),
            line["priority"],
            line.get("eta"),
            line["max_deliveries"],
            line["task"],
        )
        for line in lines
        if line["state"] != "dead"
    ]
    if waiting:
        await ctx.kernel.broker.publish(waiting)
    dead = [
        BrokerDeadLetter(
            line["id"],
            line["queue"],
            base64.b64decode(line["body"]),
            str(line["dead"].get("reason", "")),
            line["dead"].get("error"),
            float(line["dead"].get("failed_at") or 0.0),
            int(line["dead"].get("deliveries") or 0),
            {"priority": line["priority"], "max_deliveries": line["max_deliveries"]},
        )
        for line in lines
        if line["state"] == "dead"
    ]
    if dead:
        await broker.add_dead(dead)


def _parse(fp: IO[str], where: str) -> Iterator[dict[str, Any]]:
    """Every task line, checked (ConfigError naming the first bad line, nothing yielded
    before the whole file passed)."""
    checked: list[dict[str, Any]] = []
    first = True
    for number, text in enumerate(fp, 1):
        if not text.strip():
            continue
        try:
            doc = json.loads(text)
        except ValueError as exc:
            raise _bad(where, number, f"not JSON ({exc})") from None
        if not isinstance(doc, dict):
            raise _bad(where, number, "not a JSON object")
        if first:
            if doc.get("taskflow_snapshot") != VERSION:
                raise _bad(
                    where, number, "not a taskflow snapshot (no taskflow_snapshot: 1 header)"
                )
            first = False
            continue
        _check(doc, where, number)
        checked.append(doc)
    if first:
        raise _bad(where, 1, "empty: not a taskflow snapshot")
    yield from checked


def _check(doc: dict[str, Any], where: str, number: int) -> None:
    for name, kind in _FIELDS.items():
        if not isinstance(doc.get(name), kind) or isinstance(doc.get(name), bool):
            raise _bad(where, number, f"field {name!r} missing or not a {kind.__name__}")  # type: ignore[union-attr]
    if doc["state"] not in EXPORTABLE:
        raise _bad(where, number, f"state {doc['state']!r} is not one of {', '.join(EXPORTABLE)}")
    if "body" not in doc:
        raise _bad(where, number, "no body (exported with redact): cannot be imported")
    try:
        base64.b64decode(doc["body"], validate=True)
    except (binascii.Error, TypeError, ValueError):
        raise _bad(where, number, "body is not base64") from None
    if doc["state"] == "dead" and not isinstance(doc.get("dead"), dict):
        raise _bad(where, number, "a dead task needs its 'dead' object")
    if doc.get("eta") is not None and not isinstance(doc["eta"], int | float):
        raise _bad(where, number, "eta must be epoch seconds or null")
    if doc.get("record") is not None and not isinstance(doc["record"], dict):
        raise _bad(where, number, "record must be an object or null")


def _bad(where: str, number: int, why: str) -> ConfigError:
    return ConfigError(f"{where}: line {number}: {why}; nothing was imported")
