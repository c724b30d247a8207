"""An app for the SQLite process tests, run by ``taskflow worker -A`` in a subprocess.

``TASKFLOW_BROKER_URL`` names the database file (and the lease); the results live in the
same file. Each run of a task appends ``<task id> <pid>`` to the file ``RUNS_FILE`` names,
so tests can count runs.
"""

from __future__ import annotations

import asyncio
import gc
import os
import subprocess
import time

from taskflow import App, current_task

URL = os.environ.get("TASKFLOW_BROKER_URL", "sqlite:///taskflow-it.db")
RUNS_FILE = os.environ.get("RUNS_FILE", "runs.txt")

app = App("sqliteit", broker=URL)


def note_run() -> None:
    """Record that this process ran the current task."""
    ctx = current_task()
    assert ctx is not None
    with open(RUNS_FILE, "a", encoding="ascii") as runs:
        runs.write(f"{ctx.id} {os.getpid()}\n")


@app.task(name="it.sleep", retries=2, timeout=60)
def sleep(seconds: float) -> int:
    """Sleep, then return the worker's pid."""
    note_run()
    time.sleep(seconds)
    return os.getpid()


@app.task(name="it.add")
def add(x: int, y: int) -> int:
    """Add two numbers."""
    note_run()
    return x + y


@app.task(name="it.cpus")
def cpus() -> list[int]:
    """The CPUs the body's thread may run on."""
    return sorted(os.sched_getaffinity(0))


@app.task(name="it.policies")
def policies() -> dict[str, int]:
    """The scheduling policy of the body's thread and of each thread of the worker."""
    threads = {tid: os.sched_getscheduler(int(tid)) for tid in os.listdir("/proc/self/task")}
    return {"body": os.sched_getscheduler(0), **threads}


@app.task(name="it.child_cpus")
def child_cpus() -> str:
    """The CPUs a program started by the body may run on (its ``Cpus_allowed_list``)."""
    shown = subprocess.run(
        ["grep", "Cpus_allowed_list", "/proc/self/status"],
        check=True,
        capture_output=True,
        text=True,
    )
    return shown.stdout.split(":", 1)[1].strip()


@app.task(name="it.achild_cpus")
async def achild_cpus(shell: bool = False) -> str:
    """:func:`child_cpus` from a coroutine body, started from the loop's thread (through a
    shell if ``shell``)."""
    command = ("grep", "Cpus_allowed_list", "/proc/self/status")
    pipe = asyncio.subprocess.PIPE
    if shell:
        proc = await asyncio.create_subprocess_shell(" ".join(command), stdout=pipe)
    else:
        proc = await asyncio.create_subprocess_exec(*command, stdout=pipe)
    out, _ = await proc.communicate()
    return out.decode().split(":", 1)[1].strip()


@app.task(name="it.gc_frozen")
def gc_frozen() -> int:
    """How many objects the worker process moved out of the collector's generations."""
    return gc.get_freeze_count()


@app.task(name="it.gc_threshold")
def gc_threshold() -> list[int]:
    """The worker process's garbage collector thresholds."""
    return list(gc.get_threshold())


@app.task(name="it.event_loop")
async def event_loop() -> str:
    """The event loop the body runs on: ``uvloop`` or ``asyncio``."""
    import uvloop  # noqa: PLC0415 -- only this task needs it

    loop = asyncio.get_running_loop()
    return "uvloop" if isinstance(loop, uvloop.Loop) else type(loop).__module__.split(".")[0]
