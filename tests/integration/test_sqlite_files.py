"""The SQLite file a URL names: every unusable file is a ConfigError naming the path and
the fix, and nothing is written to it; a usable one is shared by broker and results."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import stat
from pathlib import Path

import pytest

from taskflow import App
from taskflow.brokers.sqlite import SqliteBroker
from taskflow.errors import ConfigError
from taskflow.results.sqlite import SqliteResultStore


def connect_broker(path: Path) -> None:
    async def body() -> None:
        broker = SqliteBroker(f"sqlite:///{path}")
        try:
            await broker.connect()
        finally:
            await broker.close()

    asyncio.run(body())


def test_a_file_in_a_missing_directory_names_the_directory_and_creates_nothing(
    tmp_path: Path,
) -> None:
    path = tmp_path / "nowhere" / "tasks.db"
    with pytest.raises(ConfigError) as info:
        connect_broker(path)
    assert str(tmp_path / "nowhere") in str(info.value)
    assert "mkdir" in str(info.value)
    assert not (tmp_path / "nowhere").exists()


def test_a_read_only_file_is_refused_and_left_as_it_was(tmp_path: Path) -> None:
    path = tmp_path / "tasks.db"
    connect_broker(path)
    before = path.read_bytes()
    path.chmod(stat.S_IRUSR)
    try:
        with pytest.raises(ConfigError) as info:
            connect_broker(path)
    finally:
        path.chmod(stat.S_IRUSR | stat.S_IWUSR)
    assert str(path) in str(info.value)
    assert "writable" in str(info.value)
    assert path.read_bytes() == before


def test_a_file_that_is_not_a_database_is_refused_and_not_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("my notes, not a queue\n")
    with pytest.raises(ConfigError) as info:
        connect_broker(path)
    assert str(path) in str(info.value)
    assert "not a taskflow database" in str(info.value)
    assert path.read_text() == "my notes, not a queue\n"


def test_another_programs_sqlite_database_is_refused_and_not_changed(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE customers (name TEXT)")
    before = path.read_bytes()
    with pytest.raises(ConfigError) as info:
        connect_broker(path)
    assert str(path) in str(info.value)
    assert "another program" in str(info.value)
    assert path.read_bytes() == before
    assert not os.path.exists(f"{path}-wal")


def test_a_database_of_a_newer_schema_asks_for_an_upgrade_and_is_not_changed(
    tmp_path: Path,
) -> None:
    path = tmp_path / "tasks.db"
    connect_broker(path)
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE taskflow_meta SET value = '99' WHERE key = 'schema_version'")
    conn.close()
    before = path.read_bytes()
    with pytest.raises(ConfigError) as info:
        connect_broker(path)
    text = str(info.value)
    assert str(path) in text
    assert "schema version 99" in text
    assert "upgrade" in text
    assert path.read_bytes() == before


def test_results_of_a_sqlite_broker_default_to_the_same_file(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/tasks.db"
    app = App("files", broker=url)
    try:
        results = app.results
        assert isinstance(results, SqliteResultStore)
        assert results.path == str(tmp_path / "tasks.db")
    finally:
        app.close()


def test_a_relative_and_an_absolute_path_are_both_understood() -> None:
    assert SqliteBroker("sqlite:///tasks.db").path == "tasks.db"
    assert SqliteBroker("sqlite:////var/lib/tasks.db").path == "/var/lib/tasks.db"
