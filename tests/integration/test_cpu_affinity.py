"""``--cpu-affinity auto``: real worker processes keep their threads on one CPU of their
own, the processes of ``-P 2`` on different ones; without it nothing is pinned, unless
``-P N`` gives every CPU a process (then ``auto`` is the default)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from taskflow import App
from tests.integration.redis_helpers import ROOT, stop, wait_until
from tests.integration.sqlite_helpers import APP_SPEC, start_worker

pytestmark = pytest.mark.skipif(
    not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2,
    reason="needs Linux and at least two CPUs",
)


def thread_cpus(pid: int) -> dict[int, str]:
    """Each thread of process ``pid`` and the CPUs it may run on (``Cpus_allowed_list``)."""
    allowed: dict[int, str] = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            status = Path(f"/proc/{pid}/task/{tid}/status").read_text()
        except FileNotFoundError:
            continue  # ended meanwhile
        for line in status.splitlines():
            if line.startswith("Cpus_allowed_list:"):
                allowed[int(tid)] = line.split(":", 1)[1].strip()
    return allowed


def children(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(word) for word in text.split()]


def pinned_to(pid: int) -> str | None:
    """The one CPU every thread of ``pid`` is pinned to, or None."""
    cpus = set(thread_cpus(pid).values())
    if len(cpus) == 1:
        (only,) = cpus
        if only.isdigit():
            return only
    return None


def start_pinned(
    tmp_path: Path, processes: int = 1, options: tuple[str, ...] = ("--cpu-affinity", "auto")
) -> tuple[str, subprocess.Popen[bytes]]:
    """A worker with ``options`` (``--cpu-affinity auto`` unless told others), its CPU
    claims in ``tmp_path`` (apart from any other test's); returns the broker URL and the
    process."""
    url = f"sqlite:///{tmp_path}/tasks.db"
    claims = {"XDG_RUNTIME_DIR": str(tmp_path)}
    worker = start_worker(url, tmp_path / "runs.txt", processes, 4, options=options, env=claims)
    return url, worker


def worker_processes(supervisor: subprocess.Popen[bytes], count: int) -> list[int]:
    """The ``count`` worker processes of ``supervisor``, once it has them all."""
    wait_until(lambda: len(children(supervisor.pid)) == count, 30, "the worker processes")
    return children(supervisor.pid)


def test_a_worker_with_auto_keeps_every_thread_on_one_cpu(tmp_path: Path) -> None:
    url, worker = start_pinned(tmp_path)
    try:
        with App("producer", broker=url) as app:
            body = app.send_task("it.cpus").get(timeout=30)
        assert len(body) == 1  # the body's thread, started after the pin, inherited it
        cpu = pinned_to(worker.pid)
        assert cpu == str(body[0])
        assert (tmp_path / f"taskflow-cpus-{os.getuid()}" / f"cpu-{cpu}.lock").exists()
    finally:
        stop(worker)
    assert worker.returncode == 0


def cpu_list(text: str) -> list[int]:
    """``0-2,5`` as ``[0, 1, 2, 5]``."""
    cpus: list[int] = []
    for part in text.split(","):
        low, _, high = part.partition("-")
        cpus += range(int(low), int(high or low) + 1)
    return cpus


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_program_a_task_starts_gets_the_cpus_the_worker_had_before(
    tmp_path: Path, loop: str
) -> None:
    # uvloop's loop makes a child in C, without Python's audit events: taskflow's loop
    # raises one of its own first.
    url, worker = start_pinned(tmp_path, options=("--cpu-affinity", "auto", "--loop", loop))
    try:
        with App("producer", broker=url) as app:
            child = app.send_task("it.child_cpus").get(timeout=30)
            after = app.send_task("it.cpus").get(timeout=30)
            from_loop = app.send_task("it.achild_cpus").get(timeout=30)
            from_shell = app.send_task("it.achild_cpus", args=(True,)).get(timeout=30)
            app.send_task("it.cpus").get(timeout=30)  # a step of the loop after the child
        everywhere = sorted(os.sched_getaffinity(0))
        assert cpu_list(child) == everywhere  # not the one CPU
        assert cpu_list(from_loop) == everywhere
        assert cpu_list(from_shell) == everywhere
        assert len(after) == 1  # the body's thread was pinned again before the next body
        assert pinned_to(worker.pid) == str(after[0])  # the loop's thread too
    finally:
        stop(worker)
    assert worker.returncode == 0


def test_the_processes_of_one_supervisor_take_different_cpus(tmp_path: Path) -> None:
    _, worker = start_pinned(tmp_path, processes=2)
    try:
        kids = worker_processes(worker, 2)
        wait_until(lambda: all(pinned_to(kid) is not None for kid in kids), 30, "both pinned")
        assert len({pinned_to(kid) for kid in kids}) == 2
        assert pinned_to(worker.pid) is None  # the supervisor runs no tasks
    finally:
        stop(worker)
    assert worker.returncode == 0


def test_as_many_processes_as_cpus_are_pinned_without_the_option(tmp_path: Path) -> None:
    cpus = len(os.sched_getaffinity(0))
    _, worker = start_pinned(tmp_path, cpus, options=())
    try:
        kids = worker_processes(worker, cpus)
        wait_until(lambda: all(pinned_to(kid) is not None for kid in kids), 30, "all pinned")
        assert len({pinned_to(kid) for kid in kids}) == cpus
    finally:
        stop(worker)
    assert worker.returncode == 0


def test_off_keeps_as_many_processes_as_cpus_unpinned(tmp_path: Path) -> None:
    cpus = len(os.sched_getaffinity(0))
    url, worker = start_pinned(tmp_path, cpus, options=("--cpu-affinity", "off"))
    try:
        kids = worker_processes(worker, cpus)
        with App("producer", broker=url) as app:
            body = app.send_task("it.cpus").get(timeout=30)
        assert body == sorted(os.sched_getaffinity(0))
        assert all(pinned_to(kid) is None for kid in kids)
        assert not (tmp_path / f"taskflow-cpus-{os.getuid()}").exists()
    finally:
        stop(worker)
    assert worker.returncode == 0


def test_fewer_processes_than_cpus_are_not_pinned_without_the_option(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/tasks.db"
    worker = start_worker(url, tmp_path / "runs.txt", env={"XDG_RUNTIME_DIR": str(tmp_path)})
    try:
        with App("producer", broker=url) as app:
            body = app.send_task("it.cpus").get(timeout=30)
        assert body == sorted(os.sched_getaffinity(0))
        assert pinned_to(worker.pid) is None
        assert not (tmp_path / f"taskflow-cpus-{os.getuid()}").exists()
    finally:
        stop(worker)


def run_with_the_process_pool(tmp_path: Path, args: list[str], env: dict[str, str]) -> str:
    """``taskflow worker --pool processes`` with ``args`` and ``env``: its stderr, once it
    exited with status 2 (bad usage)."""
    command = [sys.executable, "-m", "taskflow.cli.main", "worker", "-A", APP_SPEC]
    command += ["--pool", "processes", *args]
    environ = {**os.environ, "TASKFLOW_BROKER_URL": f"sqlite:///{tmp_path}/t.db", **env}
    done = subprocess.run(
        command, check=False, cwd=ROOT, env=environ, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    return done.stderr


def test_auto_with_the_process_pool_is_refused_as_bad_usage(tmp_path: Path) -> None:
    stderr = run_with_the_process_pool(tmp_path, ["--cpu-affinity", "auto"], {})
    assert "--cpu-affinity auto applies to the thread pool only" in stderr


def test_the_environment_variable_stands_in_for_the_option(tmp_path: Path) -> None:
    # Read, and refused with the process pool as the option is.
    stderr = run_with_the_process_pool(tmp_path, [], {"TASKFLOW_CPU_AFFINITY": "auto"})
    assert "--cpu-affinity auto applies to the thread pool only" in stderr
