"""Helpers for the SQLite process tests: ``taskflow worker`` subprocesses on one file."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from tests.integration.redis_helpers import ROOT

APP_SPEC = "tests.integration.sqlite_worker_app:app"


def start_worker(
    url: str,
    runs: Path,
    processes: int = 1,
    concurrency: int = 2,
    options: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """``taskflow worker`` for the SQLite app, in its own process (``-P processes``), with
    more ``options`` and environment variables ``env`` if given."""
    environ = {
        **os.environ,
        "TASKFLOW_BROKER_URL": url,
        "RUNS_FILE": str(runs),
        "PYTHONPATH": str(ROOT),
        **(env or {}),
    }
    command = [sys.executable, "-m", "taskflow.cli.main", "worker", "-A", APP_SPEC]
    command += ["-c", str(concurrency), "-P", str(processes), "--loglevel", "warning"]
    return subprocess.Popen([*command, *options], cwd=ROOT, env=environ)
