"""``delay()`` from a plain thread on Redis: the direct publish path and its fallbacks.

A private server, because the test flushes its scripts and kills its clients.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import redis

from taskflow import App
from taskflow.errors import QueueFull
from tests.conftest import loop_hops
from tests.integration.redis_helpers import private_redis


def _ready(app: App) -> int:
    depth = app.kernel.call(app.broker.depth("default"))  # type: ignore[attr-defined]
    return int(depth["ready"])


def test_delay_survives_a_script_flush_and_killed_connections(tmp_path: Path) -> None:
    with private_redis(tmp_path) as (port, _):
        app = App("syncpub", broker=f"redis://127.0.0.1:{port}/0?prefix=syncpub")
        admin = redis.Redis(port=port)
        try:

            @app.task(name="syncpub.noop", store_result=False)
            def noop(i: int) -> None:
                return None

            for i in range(20):
                noop.delay(i)
            admin.script_flush()  # as after a restart without persistence
            noop.delay(20)
            admin.client_kill_filter(_type="normal", skipme=True)  # a dropped connection
            noop.delay(21)
            noop.delay(22)
            assert _ready(app) == 23
        finally:
            admin.close()
            app.close()


def test_concurrent_delays_from_threads_all_land(tmp_path: Path) -> None:
    with private_redis(tmp_path) as (port, _):
        app = App("syncpub", broker=f"redis://127.0.0.1:{port}/0?prefix=syncpub")
        try:

            @app.task(name="syncpub.noop", store_result=False)
            def noop(i: int) -> None:
                return None

            def send(base: int) -> None:
                for i in range(100):
                    noop.delay(base + i)

            # More threads than the direct path keeps connections for: the rest go through
            # the client's own calls.
            threads = [threading.Thread(target=send, args=(k * 1000,)) for k in range(24)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            assert _ready(app) == 2400
        finally:
            app.close()


def test_a_full_queue_is_refused_and_the_next_delay_still_works(tmp_path: Path) -> None:
    with private_redis(tmp_path) as (port, _):
        app = App("syncpub", broker=f"redis://127.0.0.1:{port}/0?prefix=syncpub")
        try:

            @app.task(name="syncpub.noop", store_result=False)
            def noop(i: int) -> None:
                return None

            noop.delay(0)
            app.kernel.call(app.broker.declare("default", max_length=2))
            noop.delay(1)
            with pytest.raises(QueueFull, match="'default' is full"):
                noop.delay(2)
            app.kernel.call(app.broker.declare("default", max_length=10))
            noop.delay(3)
            assert _ready(app) == 3
        finally:
            app.close()


def test_a_delay_that_stores_its_result_writes_its_record_without_the_loop(
    tmp_path: Path,
) -> None:
    with private_redis(tmp_path) as (port, _):
        app = App("syncrec", broker=f"redis://127.0.0.1:{port}/0?prefix=syncrec")
        admin = redis.Redis(port=port)
        try:

            @app.task(name="syncrec.add")
            def add(x: int, y: int) -> int:
                return x + y

            add.delay(0, 0)  # connects the backends (on the loop, once)
            with loop_hops(app) as hops:
                results = [add.delay(i, i) for i in range(20)]
                admin.script_flush()  # the record script is loaded again on the next call
                results.append(add.delay(20, 20))
            assert hops == []  # record and message written from this thread
            assert {r.status.value for r in results} == {"queued"}
            with app.worker(concurrency=4):
                assert [r.get(timeout=10) for r in results] == [i * 2 for i in range(21)]
        finally:
            admin.close()
            app.close()


def test_records_sent_ahead_are_answered_each_on_its_own_connection(tmp_path: Path) -> None:
    with private_redis(tmp_path) as (port, _):
        app = App("syncrec", broker=f"redis://127.0.0.1:{port}/0?prefix=syncrec")
        try:
            store = app.results
            app.kernel.call(app.kernel.connect())
            queued = {"status": "queued", "name": "syncrec.add"}
            # Two sends in flight at once, their answers read in the other order: the
            # first connection is not handed out again while its answer is unread.
            first = store.begin_create_many_blocking([("t-1", queued)], None)
            second = store.begin_create_many_blocking([("t-2", queued), ("t-3", queued)], None)
            assert second() == [True, True]
            assert first() == [True]
            assert store.create_many_blocking([("t-1", queued)], None) == [False]
            for tid in ("t-1", "t-2", "t-3"):
                record = app.kernel.call(store.get(tid))
                assert record is not None and record["status"] == "queued"
        finally:
            app.close()
