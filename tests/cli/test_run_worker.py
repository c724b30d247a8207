"""``app.run_worker()`` in a program of its own: signals handled like ``taskflow worker``.

The script under test is ``apps/runworker.py`` on the memory broker; it enqueues its own
tasks and leaves marks in a temporary directory.
"""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

import pytest

from taskflow import App
from taskflow.worker.foreground import YOUNG_THRESHOLD

from .helpers import pids, running, wait_for

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")

SCRIPT = [sys.executable, "runworker.py"]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_run_worker_gracefully_and_it_returns(
    tmp_path: Path, signum: signal.Signals
) -> None:
    with running([], tmp_path, command=SCRIPT) as script:
        wait_for(lambda: pids(tmp_path, "touched") == {script.pid}, 10, "the worker's task")

        script.signal(signum)

        assert script.wait(10) == 0
    assert pids(tmp_path, "returned") == {script.pid}
    assert f"INFO taskflow.cli: stopping gracefully ({signum.name})" in script.stderr
    assert "Traceback" not in script.stderr
    assert "KeyboardInterrupt" not in script.stderr


@pytest.mark.parametrize(("given", "young"), [(None, YOUNG_THRESHOLD), ("2500", 2500), ("0", None)])
def test_run_worker_serves_with_the_collector_threshold_asked_for_then_gives_it_back(
    tmp_path: Path, given: str | None, young: int | None
) -> None:
    env = {} if given is None else {"TASKFLOW_TEST_GC": given}
    with running([], tmp_path, command=SCRIPT, env=env) as script:
        wait_for(lambda: pids(tmp_path, "touched") == {script.pid}, 10, "the worker's task")
        script.signal(signal.SIGTERM)
        assert script.wait(10) == 0

    def thresholds(mark: str) -> list[int]:
        return [int(n) for n in (tmp_path / mark).read_text().split()]

    before = thresholds("gc-before")
    serving = before if young is None else [young, *before[1:]]
    assert thresholds("gc-serving") == serving
    assert thresholds("gc-after") == before


def test_gc_threshold_must_be_an_integer_of_0_or_more() -> None:
    app = App("cli-run-worker-bad-gc")
    for bad in (-1, 2.5, True, "700"):
        with pytest.raises(ValueError, match=r"gc_threshold must be an integer, 0 or more"):
            app.run_worker(gc_threshold=bad)


def test_a_second_sigint_ends_the_program_while_a_sync_body_blocks(tmp_path: Path) -> None:
    with running([], tmp_path, command=SCRIPT, env={"TASKFLOW_TEST_BLOCK": "1"}) as script:
        wait_for(lambda: pids(tmp_path, "blocking") == {script.pid}, 10, "the blocking body")

        script.signal(signal.SIGINT)
        wait_for(lambda: "stopping gracefully (SIGINT)" in script.stderr, 5, "the graceful stop")
        script.signal(signal.SIGINT)
        asked = time.monotonic()

        # The grace is 60 s and the body sleeps in C for 60 s: only the hard stop ends it.
        assert script.wait(5) == 0
        assert time.monotonic() - asked < 5
    assert "WARNING taskflow.cli: stopping now (SIGINT)" in script.stderr
    assert "task thread(s) still running after the stop" in script.stderr
    assert "Traceback" not in script.stderr
