"""SQLite backends for the contract suites: each factory call gets a fresh file in a
temporary directory (no server needed), removed with the directory when the run ends."""

from __future__ import annotations

import atexit
import shutil
import tempfile
import uuid
from typing import Any

from taskflow.brokers.sqlite import SqliteBroker
from taskflow.clock import Clock
from taskflow.results.sqlite import SqliteResultStore

_DIRECTORY = tempfile.mkdtemp(prefix="taskflow-contract-sqlite-")
atexit.register(shutil.rmtree, _DIRECTORY, True)


def _url() -> str:
    return f"sqlite:///{_DIRECTORY}/{uuid.uuid4().hex}.db"


async def sqlite_broker(clock: Clock | None, lease: float) -> SqliteBroker:
    """An unconnected broker on a new file."""
    return SqliteBroker(_url(), lease=lease, clock=clock)


async def sqlite_store(clock: Clock | None) -> SqliteResultStore:
    """An unconnected result store on a new file."""
    return SqliteResultStore(_url(), clock=clock)


def register(brokers: dict[str, Any], stores: dict[str, Any]) -> None:
    """Add the sqlite factories to the contract suites' registries."""
    brokers["sqlite"] = sqlite_broker
    stores["sqlite"] = sqlite_store
