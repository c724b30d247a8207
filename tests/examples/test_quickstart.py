"""The README's first command: ``examples/quickstart.py`` runs a ``taskflow worker`` process
and a producer on one SQLite file, prints the results and stops the worker cleanly -- with
no server and none of the optional extras."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import psutil  # type: ignore[import-untyped, unused-ignore]
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
# What the optional extras install; the quickstart must run without any of them.
EXTRAS = (
    "redis",
    "hiredis",
    "nats",
    "croniter",
    "google.protobuf",
    "pydantic",
    "msgpack",
    "opentelemetry",
    "kombu",
)
BLOCKER = f"""
import importlib.abc
import sys

BLOCKED = {EXTRAS!r}


class NoExtras(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if any(name == b or name.startswith(b + ".") for b in BLOCKED):
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None


sys.meta_path.insert(0, NoExtras())
"""


def readme_command() -> list[str]:
    """The README's first command after the venv part, with this test's Python."""
    found = re.search(
        r"^    python3 -m venv \.venv && \.venv/bin/pip install -e \. && "
        r"\.venv/bin/python (\S+)$",
        README,
        re.MULTILINE,
    )
    assert found is not None, "the README's first command is not where it was"
    return [sys.executable, found[1]]


def test_the_readme_quickstart_runs_a_worker_process_on_sqlite_and_stops_it(
    tmp_path: Path,
) -> None:
    (tmp_path / "sitecustomize.py").write_text(textwrap.dedent(BLOCKER))
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKFLOW_")}
    env["PYTHONPATH"] = str(tmp_path)
    proc = subprocess.run(
        readme_command(),
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    broker = re.search(r"^broker: sqlite:///(\S+)/tasks\.db$", out, re.MULTILINE)
    assert broker is not None, out
    started = re.search(
        r"^started worker \(pid (\d+)\): taskflow worker -A examples\.shop", out, re.MULTILINE
    )
    assert started is not None, out
    expected = [
        "sent 9 tasks",
        "urgent: page the on-call",
        "squares: [0, 1, 4, 9, 16]",
        "charged acme 125.00 (after 3 attempts)",
        "typed result: Invoice(customer='all', cents=350)",
        "failed as expected: ValueError: cannot handle 7",
        "priority 9 started before every priority 0: True",
        "worker stopped (exit status 0)",
        "ok",
    ]
    lines = out.splitlines()
    assert [line for line in lines if line in expected] == expected, out
    # Readable: nothing on stderr (no tracebacks, no log noise from the worker).
    assert proc.stderr == "", proc.stderr
    # The worker process is gone and the temporary directory with the database too.
    assert not _running(int(started[1]))
    assert not Path(broker[1]).exists()


def _running(pid: int) -> bool:
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False
