"""Claiming a CPU for ``--cpu-affinity auto``: one process per CPU through lock files, a
claim given up with its descriptor, a lock directory of the user's only."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from taskflow import App
from taskflow.worker import affinity
from taskflow.worker.affinity import (
    check_choice,
    claim_cpu,
    claims_dir,
    command_line_default,
    place_beside,
)

pytestmark = pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="Linux only")


def test_claims_take_different_cpus_until_none_is_left(tmp_path: Path) -> None:
    first = claim_cpu({0, 1}, tmp_path, start=1)
    second = claim_cpu({0, 1}, tmp_path, start=1)
    assert first is not None and second is not None
    assert (first.cpu, second.cpu) == (1, 0)  # the start first, then the next free one
    assert claim_cpu({0, 1}, tmp_path) is None  # both held
    first.release()
    again = claim_cpu({0, 1}, tmp_path, start=0)
    assert again is not None and again.cpu == 1  # given back with its descriptor
    second.release()
    again.release()


def test_release_gives_the_threads_their_cpus_back(tmp_path: Path) -> None:
    claim = claim_cpu({0}, tmp_path)
    assert claim is not None
    tid = os.getpid()  # the main thread, which runs the tests
    allowed = os.sched_getaffinity(tid)
    claim.before[tid] = allowed
    os.sched_setaffinity(tid, {min(allowed)})
    try:
        claim.release()
        assert os.sched_getaffinity(tid) == allowed
    finally:
        os.sched_setaffinity(tid, allowed)


def test_the_lock_directory_is_private_and_refused_when_not_the_users(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    made = claims_dir()
    assert made == tmp_path / f"taskflow-cpus-{os.getuid()}"
    assert made.stat().st_mode & 0o777 == 0o700
    other = tmp_path / "elsewhere"
    other.mkdir()
    made.rmdir()
    made.symlink_to(other)  # planted by someone else in a shared directory
    with pytest.raises(PermissionError, match="not a directory of this user's"):
        claims_dir()


def test_choices_are_checked_and_auto_is_refused_with_the_process_pool() -> None:
    assert check_choice("AUTO", "threads") == "auto"
    assert check_choice("off", "processes") == "off"
    with pytest.raises(ValueError, match="one of off, auto, not 'always'"):
        check_choice("always", "threads")
    with pytest.raises(ValueError, match="thread pool only"):
        check_choice("auto", "processes")
    app = App("affinity", broker="memory://")
    with pytest.raises(ValueError, match="thread pool only"):
        app.run_worker(pool="processes", cpu_affinity="auto")
    app.close()


def test_placing_a_thread_never_touches_the_calling_one() -> None:
    # Thread id 0 means "the calling thread" to sched_setaffinity: refused, not applied.
    before = os.sched_getaffinity(0)
    assert place_beside(0) is None
    assert os.sched_getaffinity(0) == before


@pytest.mark.parametrize(
    ("processes", "cpus", "pool", "supported", "chosen"),
    [
        (2, 2, "threads", True, "auto"),  # every CPU has a process
        (3, 2, "threads", True, "auto"),
        (1, 1, "threads", True, "auto"),
        (1, 2, "threads", True, "off"),  # a CPU no process has: the threads may use it
        (7, 8, "threads", True, "off"),
        (2, 2, "processes", True, "off"),  # never with the process pool
        (2, 2, "THREADS", True, "auto"),
        (2, 2, "threads", False, "off"),  # a platform that cannot pin
    ],
)
def test_the_command_line_pins_by_default_only_where_every_cpu_has_a_process(
    monkeypatch: pytest.MonkeyPatch,
    processes: int,
    cpus: int,
    pool: str,
    supported: bool,
    chosen: str,
) -> None:
    monkeypatch.setattr(affinity, "usable_cpus", lambda: cpus)
    monkeypatch.setattr(affinity, "supported", lambda: supported)
    assert command_line_default(processes, pool) == chosen


def test_usable_cpus_are_those_the_process_may_run_on() -> None:
    if hasattr(os, "sched_getaffinity"):
        assert affinity.usable_cpus() == len(os.sched_getaffinity(0))
    else:
        assert affinity.usable_cpus() == (os.cpu_count() or 1)
