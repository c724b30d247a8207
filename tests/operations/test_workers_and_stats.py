"""``app.admin`` workers (from heartbeat entries) and stats, on every backend; rates with
the fake clock."""

from __future__ import annotations

import time
from typing import Any

import pytest

from taskflow import App
from taskflow.clock import FakeClock
from taskflow.errors import ConfigError
from taskflow.testing import drain, running_worker

from .helpers import flaky, noop


def _beat(app: App, worker_id: str, *, last_seen: float, counters: dict[str, int]) -> None:
    info: dict[str, Any] = {
        "id": worker_id,
        "hostname": "host-a",
        "pid": 4242,
        "queues": ["default"],
        "concurrency": 4,
        "pool": "threads",
        "running": ["t-1"],
        "running_count": 1,
        "tasks": {"report": 1},
        "counters": counters,
        "started_at": last_seen - 100,
        "last_seen": last_seen,
        "heartbeat": 5.0,
    }
    app.kernel.call(app.kernel.connect())
    app.kernel.call(app.results.put_worker(info, retention=3600.0))


def test_workers_are_alive_until_three_heartbeats_are_missed(app: App) -> None:
    now = time.time()
    _beat(app, "w-fresh", last_seen=now - 1, counters={"succeeded": 3})
    _beat(app, "w-silent", last_seen=now - 16, counters={"succeeded": 1})
    workers = {w.id: w for w in app.admin.workers()}
    fresh = workers["w-fresh"]
    assert (fresh.state, fresh.hostname, fresh.pid, fresh.pool) == (
        "alive",
        "host-a",
        4242,
        "threads",
    )
    assert (fresh.queues, fresh.running, fresh.counters) == (["default"], ["t-1"], {"succeeded": 3})
    assert fresh.heartbeat == 5.0
    assert fresh.last_seen is not None and abs(fresh.last_seen.timestamp() - (now - 1)) < 1e-3
    assert workers["w-silent"].state == "lost"


def test_a_running_worker_is_listed_through_its_heartbeat(app: App, queue: str) -> None:
    noop(app, queue)
    with running_worker(app, [queue], heartbeat=0.5) as worker:
        del worker
        listed = app.admin.workers()
        assert len(listed) == 1
        assert (listed[0].state, listed[0].queues) == ("alive", [queue])
    assert app.admin.workers() == []


def test_stats_count_queues_tasks_and_live_workers(app: App, queue: str) -> None:
    bad = flaky(app, queue, failures=10, name=f"bad.{queue}")
    bad.delay(1)
    bad.delay(2)
    drain(app, [queue])
    noop(app, queue).delay()
    now = time.time()
    _beat(app, "w-1", last_seen=now, counters={"succeeded": 5, "failed": 1})
    _beat(app, "w-2", last_seen=now, counters={"succeeded": 2})
    _beat(app, "w-lost", last_seen=now - 60, counters={"succeeded": 100})
    stats = app.admin.stats()
    (q,) = [q for q in stats.queues if q.name == queue]
    assert (q.ready, q.dead) == (1, 2)
    tasks = {t.task: t for t in stats.tasks}
    assert tasks[f"bad.{queue}"].dead == 2
    assert tasks["report"].running == 2  # from the live workers' heartbeats
    assert (stats.workers, stats.lost_workers) == (2, 1)
    assert stats.totals == {"succeeded": 7, "failed": 1}
    assert stats.dead_complete
    assert stats.rate_1m == {}  # no sample a minute old yet


def test_rates_are_counter_growth_over_the_last_one_and_five_minutes() -> None:
    clock = FakeClock()
    with App("rates", clock=clock) as app:
        _beat(app, "w-1", last_seen=clock.time(), counters={"succeeded": 10})
        assert app.admin.stats().rate_1m == {}
        clock.advance(60)
        _beat(app, "w-1", last_seen=clock.time(), counters={"succeeded": 70})
        _beat(app, "w-2", last_seen=clock.time(), counters={"succeeded": 500})  # new: no base
        stats = app.admin.stats()
        assert stats.rate_1m == {"succeeded": 1.0}
        assert stats.rate_5m == {}
        for _ in range(4):
            clock.advance(60)
            _beat(app, "w-1", last_seen=clock.time(), counters={"succeeded": 70})
            _beat(app, "w-2", last_seen=clock.time(), counters={"succeeded": 500})
            app.admin.stats()
        clock.advance(1)
        _beat(app, "w-1", last_seen=clock.time(), counters={"succeeded": 311})
        _beat(app, "w-2", last_seen=clock.time(), counters={"succeeded": 500})
        stats = app.admin.stats()
        # 5 min: against the first sample (301 s old, 10): 301 more in 301 s.
        assert stats.rate_5m == {"succeeded": 1.0}
        # 1 min: against the newest sample at least 60 s old (61 s, 70).
        assert stats.rate_1m == {"succeeded": 241 / 61}


def test_audit_entries_expire_after_the_apps_audit_retention() -> None:
    clock = FakeClock()
    with App("retention", clock=clock, audit_retention=60.0) as app:
        noop(app, "q").delay()
        app.admin.pause("q")
        clock.advance(30)
        app.admin.resume("q")
        assert [e.action for e in app.admin.audit()] == ["resume", "pause"]
        clock.advance(31)
        assert [e.action for e in app.admin.audit()] == ["resume"]


def test_the_audit_names_a_real_actor_and_listings_take_a_whole_limit() -> None:
    with App("actors") as app:
        noop(app, "q").delay()
        # An empty actor recorded the process's user instead; a newline forged a line of
        # the audit log.
        for actor in ["", "ops\nforged", 5]:
            with pytest.raises(ConfigError, match="an actor must be non-empty printable"):
                app.admin.as_actor(actor)  # type: ignore[arg-type]
        app.admin.as_actor("ops@example").pause("q")
        assert [(e.actor, e.action) for e in app.admin.audit()] == [("ops@example", "pause")]
        # audit(-1) answered [], audit("10") raised a TypeError from a comparison.
        for limit in [0, -1, "10", 2.5, True]:
            with pytest.raises(ConfigError, match="limit must be a whole number, at least 1"):
                app.admin.audit(limit)  # type: ignore[arg-type]
            with pytest.raises(ConfigError, match="limit must be a whole number, at least 1"):
                app.admin.dead_letters(limit=limit)  # type: ignore[arg-type]
