"""A ``delay()`` from a plain thread on SQLite, of a task that stores its result: the queued
record and the message are both written on the calling thread (no hop onto the loop)."""

from __future__ import annotations

from pathlib import Path

from taskflow import App
from tests.conftest import loop_hops


def test_a_delay_that_stores_its_result_writes_its_record_without_the_loop(
    tmp_path: Path,
) -> None:
    app = App("sqlrec", broker=f"sqlite:///{tmp_path / 'q.db'}")
    try:

        @app.task(name="sqlrec.add")
        def add(x: int, y: int) -> int:
            return x + y

        add.delay(0, 0)  # connects the backends (on the loop, once)
        with loop_hops(app) as hops:
            results = [add.delay(i, i) for i in range(20)]
        assert hops == []  # record and message written from this thread
        assert {r.status.value for r in results} == {"queued"}
        with app.worker(concurrency=4):
            assert [r.get(timeout=10) for r in results] == [i * 2 for i in range(20)]
    finally:
        app.close()
