"""Processes that open one new SQLite file at the same moment (the worker processes of
``taskflow worker -P N`` on a fresh ``sqlite:///`` URL) all get a usable database: putting
the file in WAL mode meets the other processes' locks, which SQLite reports at once as
"database is locked" instead of waiting for them."""

from __future__ import annotations

import multiprocessing
import sqlite3
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

import pytest

from taskflow._sqlite import schema

PROCESSES = 4
ROUNDS = 25


def _open(path: str, start: Barrier, outcomes: Any) -> None:
    start.wait()
    try:
        schema.open_database(path, 5.0).close()
        outcomes.put("ok")
    except Exception as exc:  # reported to the test, which names it
        outcomes.put(repr(exc))


@pytest.mark.timeout(120)
def test_processes_opening_a_new_file_together_all_get_the_database(tmp_path: Path) -> None:
    context = multiprocessing.get_context("fork")
    failures: list[str] = []
    for round_ in range(ROUNDS):
        path = str(tmp_path / f"fresh-{round_}.db")
        start = context.Barrier(PROCESSES)
        outcomes = context.Queue()
        openers = [
            context.Process(target=_open, args=(path, start, outcomes)) for _ in range(PROCESSES)
        ]
        for opener in openers:
            opener.start()
        results = [outcomes.get(timeout=30) for _ in openers]
        for opener in openers:
            opener.join(30)
            assert opener.exitcode == 0
        failures += [result for result in results if result != "ok"]
        with sqlite3.connect(path) as conn:  # one schema, in WAL mode
            assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
            meta = dict(conn.execute("SELECT key, value FROM taskflow_meta").fetchall())
            assert meta["schema_version"] == str(schema.SCHEMA_VERSION)
    assert failures == []


class _Busy:
    """A connection whose journal-mode change is refused as busy ``times`` times."""

    def __init__(self, times: int, error: str = "database is locked") -> None:
        self.times = times
        self.error = error
        self.tries = 0

    def execute(self, sql: str) -> None:
        assert sql == "PRAGMA journal_mode = WAL"
        self.tries += 1
        if self.tries <= self.times:
            raise sqlite3.OperationalError(self.error)


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0
        self.pauses: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.pauses.append(seconds)
        self.now += seconds


def test_a_busy_file_is_tried_again_with_growing_pauses() -> None:
    conn, clock = _Busy(times=6), _Clock()
    schema._enter_wal(conn, 5.0, clock=clock, sleep=clock.sleep)  # type: ignore[arg-type]
    assert conn.tries == 7
    assert clock.pauses == [0.002, 0.004, 0.008, 0.016, 0.032, 0.05]


def test_a_file_busy_past_the_busy_timeout_is_reported() -> None:
    conn, clock = _Busy(times=10**6), _Clock()
    with pytest.raises(sqlite3.OperationalError, match="database is locked"):
        schema._enter_wal(conn, 1.0, clock=clock, sleep=clock.sleep)  # type: ignore[arg-type]
    assert clock.now == pytest.approx(1.0)  # the whole busy_timeout, and no more


def test_other_errors_are_not_tried_again() -> None:
    conn, clock = _Busy(times=1, error="disk I/O error"), _Clock()
    with pytest.raises(sqlite3.OperationalError, match="disk I/O error"):
        schema._enter_wal(conn, 5.0, clock=clock, sleep=clock.sleep)  # type: ignore[arg-type]
    assert (conn.tries, clock.pauses) == (1, [])
