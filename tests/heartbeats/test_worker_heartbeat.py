"""A worker's heartbeat in the result store, on a fake clock: written as the worker starts,
again every interval with what runs, removed on a clean stop, and never a reason for the
worker to stop when the store is away.

Nothing sleeps: the tests move the fake clock and wait for the worker's write through the
``Heartbeat.wait_beats`` seam.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from taskflow import App, BrokerError, FakeClock
from taskflow.brokers import MemoryBroker
from taskflow.results.memory import MemoryResultStore
from taskflow.worker.heartbeat import MAX_RUNNING_IDS, Heartbeat

WAIT = 10.0


def listed(app: App) -> list[dict[str, Any]]:
    return app.kernel.call(app.kernel.results.workers())


def test_a_started_worker_is_listed_at_once_with_who_it_is(fake_app: App, clock: FakeClock) -> None:
    started = clock.time()
    with fake_app.worker(queues=["default", "emails"], concurrency=3) as w:
        [entry] = listed(fake_app)
        assert entry == {
            "id": w.name,
            "hostname": socket.gethostname(),
            "pid": os.getpid(),
            "queues": ["default", "emails"],
            "concurrency": 3,
            "pool": "threads",
            "running": [],
            "running_count": 0,
            "tasks": {},
            "counters": w.counts.as_dict(),
            "started_at": started,
            "last_seen": started,
            "heartbeat": 5.0,
        }


def test_the_entry_is_written_again_every_interval_with_the_running_tasks(
    fake_app: App, clock: FakeClock
) -> None:
    started = clock.time()
    release = threading.Event()
    began = threading.Event()

    @fake_app.task(name="hb.block")
    def block() -> str:
        began.set()
        release.wait(WAIT)
        return "done"

    with fake_app.worker(concurrency=2, heartbeat=2.0) as w:
        result = block.delay()
        assert began.wait(WAIT)
        clock.advance(1.5)
        clock.advance(0.5)
        assert w.heartbeat.wait_beats(2, WAIT)
        [entry] = listed(fake_app)
        assert entry["last_seen"] == started + 2.0
        assert entry["started_at"] == started
        assert entry["running"] == [result.id]
        assert entry["running_count"] == 1
        assert entry["tasks"] == {"hb.block": 1}
        assert entry["heartbeat"] == 2.0

        release.set()
        assert result.get(timeout=WAIT) == "done"
        clock.advance(2.0)
        assert w.heartbeat.wait_beats(3, WAIT)
        [entry] = listed(fake_app)
        assert entry["last_seen"] == started + 4.0
        assert entry["running"] == []
        assert entry["counters"]["succeeded"] == 1
        assert entry["counters"]["failed"] == 0


def test_a_clean_stop_removes_the_entry(fake_app: App) -> None:
    with fake_app.worker() as w:
        assert [e["id"] for e in listed(fake_app)] == [w.name]
    assert listed(fake_app) == []


def test_a_hard_stop_removes_the_entry_too(fake_app: App) -> None:
    w = fake_app.worker().start()
    assert [e["id"] for e in listed(fake_app)] == [w.name]
    w.stop_now()
    assert listed(fake_app) == []


def test_two_workers_of_one_app_each_have_their_own_entry(fake_app: App) -> None:
    with fake_app.worker(queues=["a"]) as first, fake_app.worker(queues=["b"]) as second:
        entries = {e["id"]: e["queues"] for e in listed(fake_app)}
        assert entries == {first.name: ["a"], second.name: ["b"]}


def test_an_entry_of_a_worker_that_stopped_writing_expires_after_its_retention(
    fake_app: App, clock: FakeClock
) -> None:
    # A worker that dies without stopping leaves its last entry: here a copy of it.
    with fake_app.worker(heartbeat=2.0, heartbeat_retention=30.0) as w:
        [entry] = listed(fake_app)
        retention = w.heartbeat.retention
    store = fake_app.kernel.results
    fake_app.kernel.call(store.put_worker(entry, retention=retention))
    clock.advance(29.0)
    assert [e["id"] for e in listed(fake_app)] == [w.name]
    clock.advance(1.5)
    assert listed(fake_app) == []


def test_the_default_retention_is_ten_intervals_and_at_least_a_minute(fake_app: App) -> None:
    assert fake_app.worker().heartbeat.retention == 60.0
    assert fake_app.worker(heartbeat=20.0).heartbeat.retention == 200.0
    assert fake_app.worker(heartbeat=0.5, heartbeat_retention=3.0).heartbeat.retention == 3.0


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"heartbeat": 0}, "worker heartbeat must be a positive number of seconds, got 0"),
        ({"heartbeat": "5"}, "worker heartbeat must be a positive number of seconds"),
        ({"heartbeat": 5.0, "heartbeat_retention": 5.0}, "must be longer than the heartbeat"),
    ],
)
def test_bad_heartbeat_options_are_refused_with_their_name(
    fake_app: App, options: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        fake_app.worker(**options)


def test_a_huge_running_list_is_capped_and_counted(clock: FakeClock) -> None:
    running = [(f"t-{n}", "shop.resize" if n % 2 else "shop.mail") for n in range(250)]
    beat = Heartbeat(
        MemoryResultStore(clock=clock),
        worker_id="w1",
        queues=["default"],
        concurrency=250,
        running=lambda: running,
        counters=dict,
        interval=5.0,
        retention=60.0,
        clock=clock,
    )
    info = beat.info()
    assert info["running"] == [f"t-{n}" for n in range(MAX_RUNNING_IDS)]
    assert info["running_count"] == 250
    assert info["tasks"] == {"shop.resize": 125, "shop.mail": 125}


class AwayStore(MemoryResultStore):
    """A store whose heartbeat writes fail while ``down`` is set."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__(clock=clock)
        self.down = threading.Event()
        self.refused = 0
        self._changed = threading.Condition()

    async def put_worker(self, info: dict[str, Any], *, retention: float) -> None:
        if self.down.is_set():
            with self._changed:
                self.refused += 1
                self._changed.notify_all()
            raise BrokerError("result store redis://***@db:6379/0 is not reachable")
        await super().put_worker(info, retention=retention)

    def wait_refused(self, count: int) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: self.refused >= count, WAIT)


@pytest.fixture
def away_app(clock: FakeClock) -> Iterator[tuple[App, AwayStore]]:
    store = AwayStore(clock)
    application = App("away", broker=MemoryBroker(clock=clock), results=store, clock=clock)
    yield application, store
    application.close()


def _heartbeat_lines(caplog: pytest.LogCaptureFixture) -> list[tuple[int, str]]:
    return [(r.levelno, r.getMessage()) for r in caplog.records if "heartbeat" in r.getMessage()]


def test_a_store_that_is_away_is_logged_once_and_never_stops_the_worker(
    away_app: tuple[App, AwayStore], clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    app, store = away_app
    caplog.set_level(logging.INFO, logger="taskflow.worker")

    @app.task(name="hb.add")
    def add(x: int, y: int) -> int:
        return x + y

    store.down.set()
    with app.worker(heartbeat=1.0) as w:
        for n in range(1, 4):
            clock.advance(1.0)
            assert store.wait_refused(n + 1)  # the first refusal was the write at start
        assert add.delay(2, 3).get(timeout=WAIT) == 5  # the worker runs on
        assert w.state == "running"
        failures = _heartbeat_lines(caplog)
        assert len(failures) == 1
        level, line = failures[0]
        assert level == logging.WARNING
        assert w.name in line
        assert "BrokerError" in line
        assert "***" in line  # the store's URL is masked

        store.down.clear()
        clock.advance(1.0)
        assert w.heartbeat.wait_beats(1, WAIT)
        assert [e["id"] for e in listed(app)] == [w.name]
        assert _heartbeat_lines(caplog)[1:] == [
            (logging.INFO, f"worker {w.name}: heartbeat written again")
        ]
