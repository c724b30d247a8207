"""Workers (from their heartbeats), cluster statistics and the audit trail."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from ._context import Context, check_limit, to_datetime, view
from ._queues import queues
from .types import AuditEntry, ClusterStats, QueueStats, TaskStats, WorkerInfo

__all__ = ["alarms", "audit", "stats", "workers"]

LOST_AFTER = 3
"""Heartbeat intervals without a heartbeat after which a worker is shown as lost."""
_SAMPLES_KEY = "admin:stats-samples"
_SAMPLES_KEPT = 360.0  # seconds of samples kept for the 5-minute rate
_DEAD_COUNTED = 10_000  # dead letters per queue counted by task name


async def workers(ctx: Context) -> list[WorkerInfo]:
    """Every worker with a heartbeat entry, ``lost`` when silent for 3 intervals."""
    await ctx.kernel.connect()
    now = ctx.kernel.clock.time()
    return [_worker(entry, now) for entry in await ctx.kernel.results.workers()]


def _worker(entry: Mapping[str, Any], now: float) -> WorkerInfo:
    interval = float(entry.get("heartbeat") or 0.0)
    last = float(entry.get("last_seen") or 0.0)
    lost = interval > 0 and now - last > LOST_AFTER * interval
    return WorkerInfo(
        id=str(entry.get("id", "")),
        hostname=str(entry.get("hostname", "")),
        pid=int(entry.get("pid") or 0),
        queues=[str(q) for q in entry.get("queues") or ()],
        concurrency=int(entry.get("concurrency") or 0),
        pool=str(entry.get("pool", "")),
        running=[str(t) for t in entry.get("running") or ()],
        counters={str(k): int(v) for k, v in (entry.get("counters") or {}).items()},
        started_at=to_datetime(entry.get("started_at")),
        last_seen=to_datetime(last),
        heartbeat=interval,
        state="lost" if lost else "alive",
    )


async def alarms(ctx: Context) -> list[str]:
    """What the broker's server reports that stops or endangers delivery."""
    return await (await ctx.broker()).alarms()


async def stats(ctx: Context) -> ClusterStats:
    """Queue counts, per-task counts and counter rates (see :class:`ClusterStats`)."""
    qs = await queues(ctx)
    entries = await ctx.kernel.results.workers()
    now = ctx.kernel.clock.time()
    shown = [_worker(e, now) for e in entries]
    alive = [w for w in shown if w.state == "alive"]
    totals: dict[str, int] = {}
    for w in alive:
        for name, n in w.counters.items():
            totals[name] = totals.get(name, 0) + n
    running: dict[str, int] = {}
    alive_ids = {w.id for w in alive}
    for e in entries:
        if str(e.get("id", "")) not in alive_ids:
            continue  # a lost worker's tasks are not running any more
        for name, n in (e.get("tasks") or {}).items():
            running[str(name)] = running.get(str(name), 0) + int(n)
    dead, complete = await _dead_by_task(ctx, [q.name for q in qs if q.dead])
    rate_1m, rate_5m = await _rates(ctx, now, {w.id: w.counters for w in alive})
    return ClusterStats(
        at=datetime.fromtimestamp(now, tz=UTC),
        queues=[QueueStats(q.name, q.ready, q.scheduled, q.running, q.dead, q.paused) for q in qs],
        tasks=[
            TaskStats(name, dead.get(name, 0), running.get(name, 0))
            for name in sorted(set(dead) | set(running))
        ],
        workers=len(alive),
        lost_workers=len(shown) - len(alive),
        totals=totals,
        rate_1m=rate_1m,
        rate_5m=rate_5m,
        dead_complete=complete,
        alarms=await alarms(ctx),
    )


async def _dead_by_task(ctx: Context, names: list[str]) -> tuple[dict[str, int], bool]:
    broker = await ctx.broker()
    counts: dict[str, int] = {}
    complete = True
    for queue in names:
        pos: int | None = 0
        seen = 0
        while pos is not None and seen < _DEAD_COUNTED:
            page, pos = await broker.dead_page(queue, pos, 1000)
            seen += len(page)
            for _, letter in page:
                task = view(letter).task or "?"
                counts[task] = counts.get(task, 0) + 1
        complete = complete and pos is None
    return counts, complete


async def _rates(
    ctx: Context, now: float, counters: dict[str, dict[str, int]]
) -> tuple[dict[str, float], dict[str, float]]:
    """Store this sample; rates against the newest samples at least 60 s / 300 s old."""
    results = ctx.kernel.results
    raw = await results.get_value(_SAMPLES_KEY)
    try:
        samples: list[dict[str, Any]] = json.loads(raw) if raw else []
    except ValueError:
        samples = []
    samples = [s for s in samples if now - float(s.get("at", 0)) <= _SAMPLES_KEPT]
    rates = (_rate(samples, now, counters, 60.0), _rate(samples, now, counters, 300.0))
    samples.append({"at": now, "workers": counters})
    await results.delete_value(_SAMPLES_KEY)
    await results.set_nx(_SAMPLES_KEY, json.dumps(samples), _SAMPLES_KEPT)
    return rates


def _rate(
    samples: list[dict[str, Any]], now: float, counters: dict[str, dict[str, int]], age: float
) -> dict[str, float]:
    old = [s for s in samples if now - float(s["at"]) >= age]
    if not old:
        return {}
    base = old[-1]
    span = now - float(base["at"])
    growth: dict[str, int] = {}
    for wid, then in (base.get("workers") or {}).items():
        current = counters.get(wid)
        if current is None:
            continue  # gone since: its counts cannot be compared
        for name, n in current.items():
            growth[name] = growth.get(name, 0) + max(0, n - int(then.get(name, 0)))
    return {name: n / span for name, n in growth.items()}


async def audit(ctx: Context, limit: int) -> list[AuditEntry]:
    """The newest ``limit`` audit entries, newest first."""
    check_limit(limit)
    await ctx.kernel.connect()
    out = []
    for e in await ctx.kernel.results.audit(limit):
        out.append(
            AuditEntry(
                at=to_datetime(e.get("at")) or datetime.fromtimestamp(0, tz=UTC),
                actor=str(e.get("actor", "")),
                action=str(e.get("action", "")),
                target=str(e.get("target", "")),
                count=int(e.get("count") or 0),
                ids=[str(i) for i in e.get("ids") or ()],
                details=dict(e.get("details") or {}),
            )
        )
    return out
