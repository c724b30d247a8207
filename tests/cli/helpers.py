"""Start ``taskflow`` as a real process and wait on what it does, always within a deadline."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import psutil  # type: ignore[import-untyped, unused-ignore]

APPS = Path(__file__).parent / "apps"
ROOT = Path(__file__).resolve().parents[2]
# Set by the supervisor in its children; a test process must not pass it on by accident.
INHERITED = ("TASKFLOW_APP", "TASKFLOW_SUPERVISOR_PID", "TASKFLOW_WORKER_INDEX")


def taskflow_command() -> list[str]:
    """The installed ``taskflow`` script next to this Python, else ``python -m``."""
    script = os.path.join(os.path.dirname(sys.executable), "taskflow")
    if os.access(script, os.X_OK):
        return [script]
    return [sys.executable, "-m", "taskflow.cli.main"]


def environment(out: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The test process's environment, with the output directory and the repo importable."""
    env = {k: v for k, v in os.environ.items() if k not in INHERITED}
    env["TASKFLOW_TEST_DIR"] = str(out)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.update(extra or {})
    return env


class Process:
    """A ``taskflow`` process with its stderr captured to a file (a pipe could fill up)."""

    def __init__(
        self,
        args: Sequence[str],
        out: Path,
        *,
        env: Mapping[str, str] | None = None,
        command: Sequence[str] | None = None,
    ) -> None:
        self.stderr_path = out / f".stderr-{time.monotonic_ns()}"
        with open(self.stderr_path, "wb") as stderr:
            self.proc = subprocess.Popen(
                [*(command or taskflow_command()), *args],
                cwd=APPS,
                env=environment(out, env),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def signal(self, signum: signal.Signals) -> None:
        self.proc.send_signal(signum)

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


@contextmanager
def running(
    args: Sequence[str],
    out: Path,
    *,
    env: Mapping[str, str] | None = None,
    command: Sequence[str] | None = None,
) -> Iterator[Process]:
    """A process that is killed, with any worker processes it left, if the test fails."""
    process = Process(args, out, env=env, command=command)
    try:
        yield process
    finally:
        process.kill()
        for pid in pids(out, "imported"):
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``condition`` until it holds; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def pids(out: Path, mark: str) -> set[int]:
    """Pids of the processes that left ``<mark>-<pid>`` in ``out``."""
    return {int(p.name.rsplit("-", 1)[1]) for p in out.glob(f"{mark}-*")}


def alive(pid: int) -> bool:
    """Whether ``pid`` is a running process (a zombie is not)."""
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


def run(
    args: Sequence[str], out: Path, *, env: Mapping[str, str] | None = None, timeout: float = 15.0
) -> subprocess.CompletedProcess[str]:
    """Run ``taskflow`` to completion (for commands that fail fast)."""
    return subprocess.run(
        [*taskflow_command(), *args],
        cwd=APPS,
        env=environment(out, env),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
