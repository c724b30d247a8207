"""taskflow across two processes on one SQLite file (no server needed).

    python examples/quickstart.py

Makes a temporary directory, points ``TASKFLOW_BROKER_URL`` at ``sqlite:///<dir>/tasks.db``,
sends the tasks of ``examples/shop.py`` from this process (priorities, retries with backoff,
a failure, typed results), runs ``taskflow worker -A examples.shop -c 4`` as a second
process to work on them, prints the results, stops the worker with SIGTERM (it exits 0)
and removes the directory.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, TypeVar

from taskflow import AsyncResult, ResultTimeout, TaskFailed, TaskStatus

T = TypeVar("T")

ROOT = Path(__file__).resolve().parent.parent  # the directory that holds examples/
RESULT_TIMEOUT = 30.0
STOP_TIMEOUT = 30.0


def worker_command() -> list[str]:
    """``taskflow worker -A examples.shop -c 4``, with the script next to this Python."""
    script = Path(sys.executable).parent / "taskflow"
    program = (
        [str(script)] if os.access(script, os.X_OK) else [sys.executable, "-m", "taskflow.cli.main"]
    )
    return [*program, "worker", "-A", "examples.shop", "-c", "4", "--loglevel", "warning"]


def stop(worker: subprocess.Popen[bytes]) -> int:
    """SIGTERM (a graceful stop), then the worker's exit status."""
    if worker.poll() is None:
        worker.send_signal(signal.SIGTERM)
    try:
        return worker.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        worker.kill()
        worker.wait()
        print(f"worker did not stop within {STOP_TIMEOUT:g}s; killed it", file=sys.stderr)
        return -signal.SIGKILL


def result(handle: AsyncResult[T], worker: subprocess.Popen[bytes]) -> T:
    """``handle.get()``, giving up at once if the worker process ended."""
    deadline = time.monotonic() + RESULT_TIMEOUT
    while True:
        try:
            return handle.get(timeout=0.5)
        except ResultTimeout:
            if worker.poll() is not None:
                raise SystemExit(f"the worker exited early (status {worker.returncode})") from None
            if time.monotonic() > deadline:
                raise


def run(directory: Path) -> int:
    os.environ["TASKFLOW_BROKER_URL"] = f"sqlite:///{directory / 'tasks.db'}"
    sys.path.insert(0, str(ROOT))
    from examples.shop import Invoice, app, broken, flaky_payment, routine, total, urgent

    print(f"broker: {os.environ['TASKFLOW_BROKER_URL']}")
    # Sent before any worker runs: the tasks wait in the file, and priority 9 goes first.
    routines = [routine.delay(i) for i in range(5)]
    important = urgent.delay("page the on-call")
    payment = flaky_payment.delay(Invoice("acme", 12_500))
    failing = broken.delay(7)
    summed = total.delay([Invoice("a", 100), Invoice("b", 250)])
    print("sent 9 tasks")

    worker = subprocess.Popen(worker_command(), cwd=ROOT, stdin=subprocess.DEVNULL)
    print(f"started worker (pid {worker.pid}): taskflow worker -A examples.shop -c 4")
    try:
        print(result(important, worker))
        print("squares:", [result(r, worker) for r in routines])
        print(result(payment, worker), f"(after {payment.info().attempts} attempts)")
        invoice = result(summed, worker)
        print("typed result:", invoice)
        assert isinstance(invoice, Invoice)
        try:
            result(failing, worker)
        except TaskFailed as exc:
            print(f"failed as expected: {exc.exc_type}: {exc.message}")
        assert failing.status is TaskStatus.FAILED
        earliest_routine = min(_started(r) for r in routines)
        print(
            "priority 9 started before every priority 0:", _started(important) <= earliest_routine
        )
    finally:
        code = stop(worker)
        app.close()
    print(f"worker stopped (exit status {code})")
    return code


def _started(result: AsyncResult[Any]) -> float:
    started = result.info().started_at
    return started.timestamp() if started is not None else float("inf")


def main() -> None:
    directory = Path(tempfile.mkdtemp(prefix="taskflow-quickstart-"))
    try:
        code = run(directory)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    if code != 0:
        sys.exit(1)
    print("ok")


if __name__ == "__main__":
    main()
