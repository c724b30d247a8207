"""Benchmark of the SQLite backend: enqueue rate, drain rate and pickup latency, beside Huey.

Run from the project root (as a module, so that ``bench`` is importable)::

    python -m bench.sqlite_backend [--tasks 20000] [--samples 200] [--slots 8] [--prefetch N]
                                   [--processes 2]
                                   [--idle 0.05] [--peer huey] [--dir DIR]

``--tasks``    no-op tasks per enqueue/drain measurement (default 20,000)
``--samples``  pickup-latency samples (one task at a time on an idle, warm worker)
``--slots``    taskflow worker concurrency per process
``--prefetch`` taskflow worker prefetch buffer (default: the worker's, 2 x slots on SQLite)
``--processes`` worker processes on the file (taskflow ``-P``, Huey ``-w``; default 2)
``--idle``     seconds the worker is left idle before each latency sample
``--peer``     ``huey``: run the same workload on Huey's ``SqliteHuey`` in the same run
               (``pip install -e '.[bench]'``) and print the ratio taskflow / huey
``--huey-worker-type``  ``process`` (default) or ``thread``: Huey's workers
``--dir``      where the database files go (default: a temporary directory, removed)
``--stored-only``  only the rows of tasks that store their results (taskflow only), with
               the pickup latency of such a task

The workload is the same for both: a synchronous no-op task, no result stored
(``store_result=False``; Huey stores no ``None`` result), both databases in WAL mode with
``synchronous=NORMAL`` (taskflow's setting; Huey's connection is given the same), one
fresh file per measurement, created with its schema before the clock starts. Measured:

* enqueue rate with a ``delay()`` loop (Huey: calling the task), and with ``enqueue_many``
  in batches of 1,000 (taskflow only: Huey has no batch enqueue); for the ``delay()`` loop
  also the CPU time of the producer process per call (``time.process_time()``, every
  thread), which a busy machine distorts less than the rate;
* drain rate with 2 worker processes on one file (``--processes``): the file is filled
  first, then the workers start; the clock runs from the body of a first marker task to
  the body of a last one, with the no-ops between them (taskflow: ``taskflow worker -P 2
  -c SLOTS``;
  Huey: ``huey_consumer -k process -w 2``, one task at a time per process, or
  ``-k thread`` with ``--huey-worker-type thread``);
* pickup latency p50/p99: from ``delay()`` in this process to the task body starting in a
  worker process that was idle for ``--idle`` seconds. taskflow's waiting fetch is woken
  by the producer's wake-up byte on its socket beside the file (``taskflow._sqlite.wake``;
  ``PRAGMA data_version`` checks back it up); Huey's consumer polls its queue, here with
  ``-d 0.001 -m 0.02`` (from 1 ms, growing 1.15 times per empty poll up to 20 ms; its
  defaults are 0.1 s and 10 s). Also for taskflow with the worker in the producer's
  process, where a commit rings an in-process doorbell and wakes the fetch at once.
"""

from __future__ import annotations

import argparse
import importlib
import os
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from taskflow import App

ROOT = Path(__file__).resolve().parents[1]
URL = os.environ.get("BENCH_SQLITE_URL", "sqlite:///bench-sqlite.db")
BATCH = 1000
WARMUP = 10


def _noop() -> None:
    """Does nothing."""


def _stamp(path: str) -> None:
    """Append the time the body started to ``path`` (one line)."""
    with open(path, "a", encoding="ascii") as out:
        out.write(f"{time.time()!r}\n")


def build_app(url: str) -> App:
    """The benchmark app: a no-op and a stamp task, no results stored."""
    bench = App("bench", broker=url)
    bench.task(name="bench.noop", store_result=False)(_noop)
    bench.task(name="bench.stamp", store_result=False)(_stamp)
    bench.task(name="bench.noop_stored")(_noop)  # taskflow only: its queued record too
    bench.task(name="bench.stamp_stored")(_stamp)
    return bench


app = build_app(URL)


def build_huey(filename: str) -> tuple[Any, dict[str, Any]]:
    """A ``SqliteHuey`` on ``filename`` and the same two tasks, by name."""
    from huey import SqliteHuey
    from huey.storage import SqliteStorage

    class Storage(SqliteStorage):  # type: ignore[misc]
        def _create_connection(self) -> sqlite3.Connection:
            conn: sqlite3.Connection = super()._create_connection()
            conn.execute("pragma synchronous=NORMAL")  # as taskflow's files
            return conn

    class Huey(SqliteHuey):  # type: ignore[misc]
        storage_class = Storage

    peer = Huey("bench", filename=filename)
    tasks = {
        name: peer.task(name=name)(fn)
        for name, fn in (("bench.noop", _noop), ("bench.stamp", _stamp))
    }
    return peer, tasks


# What huey_consumer runs (built only there: building it creates the file).
huey = build_huey(os.environ["BENCH_HUEY_FILE"])[0] if "BENCH_HUEY_FILE" in os.environ else None


# -- the two systems, behind one small interface -----------------------------------------
class System:
    """One task queue under test: how to send, and how to run its workers."""

    name = ""

    def __init__(self, directory: Path, slots: int, processes: int = 2) -> None:
        self.directory = directory
        self.slots = slots
        self.processes = processes
        self.runs = 0

    def fresh(self) -> None:
        """Point the producer at a new, empty file."""
        raise NotImplementedError

    def send_noop(self) -> None:
        raise NotImplementedError

    def send_stamp(self, path: Path, name: str = "bench.stamp") -> None:
        raise NotImplementedError

    def send_many(self, count: int, name: str = "bench.noop") -> None:
        """``count`` tasks ``name`` in batches; NotImplementedError when the system has no
        batch enqueue."""
        raise NotImplementedError

    def pending(self) -> int:
        raise NotImplementedError

    def workers(self) -> subprocess.Popen[bytes]:
        """Start the worker processes on the current file."""
        raise NotImplementedError

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Release the producer's connection."""

    def _file(self, suffix: str) -> Path:
        self.runs += 1
        return self.directory / f"{self.name}-{self.runs}.{suffix}"

    def _log(self) -> Any:
        return open(self.directory / f"{self.name}-{self.runs}.log", "ab")


class Taskflow(System):
    name = "taskflow"

    def __init__(
        self, directory: Path, slots: int, prefetch: int | None = None, processes: int = 2
    ) -> None:
        super().__init__(directory, slots, processes)
        self.prefetch = prefetch
        self.app: App | None = None
        self.url = ""

    def fresh(self) -> None:
        self.close()
        self.url = f"sqlite:///{self._file('db')}"
        self.app = build_app(self.url)
        # Create the file and its schema now, outside the measurements, as building the
        # SqliteHuey does for Huey (otherwise the first delay() of a timed loop does it).
        self.app.kernel.call(self.app.kernel.connect())

    def task(self, name: str) -> Any:
        assert self.app is not None
        task = self.app.registry.get(name)
        assert task is not None
        return task

    def send_noop(self) -> None:
        self.task("bench.noop").delay()

    def send_stamp(self, path: Path, name: str = "bench.stamp") -> None:
        self.task(name).delay(str(path))

    def send_many(self, count: int, name: str = "bench.noop") -> None:
        assert self.app is not None
        noop = self.task(name)
        for start in range(0, count, BATCH):
            self.app.enqueue_many([noop.s() for _ in range(min(BATCH, count - start))])

    def pending(self) -> int:
        assert self.app is not None
        depth = self.app.kernel.call(self.app.broker.depth("default"))  # type: ignore[attr-defined]
        return int(depth["ready"] + depth["inflight"] + depth["scheduled"])

    def workers(self) -> subprocess.Popen[bytes]:
        env = {**os.environ, "BENCH_SQLITE_URL": self.url, "PYTHONPATH": str(ROOT)}
        command = [
            sys.executable, "-m", "taskflow.cli.main", "worker", "-A", "bench.sqlite_backend:app",
            "-P", str(self.processes), "-c", str(self.slots), "--loglevel", "warning",
        ]  # fmt: skip
        if self.prefetch is not None:
            command += ["--prefetch", str(self.prefetch)]
        with self._log() as log:
            return subprocess.Popen(command, cwd=ROOT, env=env, stderr=log)

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)

    def close(self) -> None:
        if self.app is not None:
            self.app.close()
            self.app = None

    @contextmanager
    def in_process(self) -> Iterator[None]:
        """A worker in this process, on the current file."""
        assert self.app is not None
        options: dict[str, Any] = {}
        if self.prefetch is not None:
            options["prefetch_buffer"] = self.prefetch
        with self.app.worker(concurrency=self.slots, **options):
            yield


class HueyPeer(System):
    name = "huey"

    def __init__(
        self, directory: Path, slots: int, worker_type: str = "process", processes: int = 2
    ) -> None:
        super().__init__(directory, slots, processes)
        self.worker_type = worker_type
        self.peer: Any = None
        self.tasks: dict[str, Any] = {}
        self.filename = ""

    def fresh(self) -> None:
        self.close()
        self.filename = str(self._file("db"))
        self.peer, self.tasks = build_huey(self.filename)

    def send_noop(self) -> None:
        self.tasks["bench.noop"]()  # calling a huey task enqueues it

    def send_stamp(self, path: Path, name: str = "bench.stamp") -> None:
        self.tasks[name](str(path))

    def send_many(self, count: int, name: str = "bench.noop") -> None:
        raise NotImplementedError

    def pending(self) -> int:
        return int(self.peer.pending_count())

    def workers(self) -> subprocess.Popen[bytes]:
        env = {**os.environ, "BENCH_HUEY_FILE": self.filename, "PYTHONPATH": str(ROOT)}
        command = [
            sys.executable, "-m", "huey.bin.huey_consumer", "bench.sqlite_backend.huey",
            "-k", self.worker_type, "-w", str(self.processes),
            "-d", "0.001", "-m", "0.02", "-b", "1.15", "-q",
        ]  # fmt: skip
        with self._log() as log:
            return subprocess.Popen(command, cwd=ROOT, env=env, stderr=log)

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        proc.send_signal(signal.SIGINT)  # Huey's graceful stop
        proc.wait(60)

    def close(self) -> None:
        if self.peer is not None:
            self.peer.storage.close()
            self.peer = None


# -- measurements ------------------------------------------------------------------------
def _lines(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def _wait_lines(path: Path, count: int, timeout: float = 60.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while True:
        lines = _lines(path)
        if len(lines) >= count:
            return lines
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {path.name} (see the logs in {path.parent})")
        time.sleep(0.001)


def enqueue_rate(system: System, tasks: int, send: Callable[[], None]) -> tuple[float, float]:
    """Tasks per second, and CPU seconds of this process per task (every thread)."""
    system.fresh()
    cpu = time.process_time()
    started = time.perf_counter()
    send()
    elapsed = time.perf_counter() - started
    return tasks / elapsed, (time.process_time() - cpu) / tasks


def drain_rate(system: System, tasks: int, name: str = "bench.noop") -> float:
    """No-ops (``name``) per second drained by the worker processes from a filled file."""
    system.fresh()
    marks = system.directory / f"{system.name}-drain-{system.runs}.txt"
    system.send_stamp(marks)
    try:
        system.send_many(tasks, name)
    except NotImplementedError:
        for _ in range(tasks):
            system.send_noop()
    system.send_stamp(marks)
    proc = system.workers()
    try:
        first, last = (float(t) for t in _wait_lines(marks, 2, timeout=60 + tasks / 100))
        deadline = time.monotonic() + 60
        while system.pending() and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        system.stop(proc)
    return tasks / (last - first)


def _latencies(
    system: System, samples: int, idle: float, name: str = "bench.stamp"
) -> tuple[float, float]:
    marks = system.directory / f"{system.name}-latency-{system.runs}-{time.monotonic_ns()}.txt"
    latencies = []
    for i in range(samples + WARMUP):
        time.sleep(idle)  # idle: the worker waits for work
        sent = time.time()
        system.send_stamp(marks, name)
        started = float(_wait_lines(marks, i + 1)[i])
        if i >= WARMUP:  # the first few warm the worker up
            latencies.append(started - sent)
    latencies.sort()
    return statistics.median(latencies), latencies[max(0, int(len(latencies) * 0.99) - 1)]


def pickup_latency(
    system: System, samples: int, idle: float, name: str = "bench.stamp"
) -> tuple[float, float]:
    """p50 and p99 seconds from ``delay()`` here to the body starting in a worker process."""
    system.fresh()
    proc = system.workers()
    try:
        return _latencies(system, samples, idle, name)
    finally:
        system.stop(proc)


def in_process_latency(system: Taskflow, samples: int, idle: float) -> tuple[float, float]:
    """The same with the worker in this process (the doorbell wakes its fetch)."""
    system.fresh()
    with system.in_process():
        return _latencies(system, samples, idle)


def measure(system: System, args: argparse.Namespace) -> dict[str, tuple[float, ...]]:
    """Every measurement of ``system``: rates in tasks/s, latencies in seconds."""
    tasks = args.tasks
    rows: dict[str, tuple[float, ...]] = {}
    workers = f"{system.processes} worker{'s' if system.processes != 1 else ''}"
    if args.stored_only:
        assert isinstance(system, Taskflow)
        _stored_rows(system, tasks, workers, rows)
        rows["pickup latency p50 / p99, worker process, result stored"] = pickup_latency(
            system, args.samples, args.idle, "bench.stamp_stored"
        )
        system.close()
        return rows

    def loop() -> None:
        for _ in range(tasks):
            system.send_noop()

    rate, cpu = enqueue_rate(system, tasks, loop)
    rows["enqueue, delay() loop"] = (rate,)
    rows["CPU per delay() (the producer process)"] = (cpu,)
    if isinstance(system, Taskflow):
        rows["enqueue, enqueue_many (batches of 1,000)"] = (
            enqueue_rate(system, tasks, lambda: system.send_many(tasks))[0],
        )
    rows[f"drain, {workers} on one file"] = (drain_rate(system, tasks),)
    if isinstance(system, Taskflow):
        _stored_rows(system, tasks, workers, rows)
    rows["pickup latency p50 / p99, worker process"] = pickup_latency(
        system, args.samples, args.idle
    )
    if isinstance(system, Taskflow):
        rows["pickup latency p50 / p99, worker in-process"] = in_process_latency(
            system, args.samples, args.idle
        )
    system.close()
    return rows


def _stored_rows(
    system: Taskflow, tasks: int, workers: str, rows: dict[str, tuple[float, ...]]
) -> None:
    """The rows of tasks that store their results (taskflow only): the queued record of
    each ``delay()``, and the record's ``running`` and outcome writes of each task drained."""

    def stored_loop() -> None:
        delay = system.task("bench.noop_stored").delay  # on the fresh file
        for _ in range(tasks):
            delay()

    rows["enqueue, delay() loop, result stored (a queued record each)"] = (
        enqueue_rate(system, tasks, stored_loop)[0],
    )
    rows[f"drain, {workers} on one file, results stored"] = (
        drain_rate(system, tasks, "bench.noop_stored"),
    )


def _show(values: tuple[float, ...] | None, latency: bool) -> str:
    if values is None:
        return "-"
    if latency:
        unit, scale = ("us", 1e6) if values[0] < 0.0001 else ("ms", 1000)
        return " / ".join(f"{v * scale:.2f} {unit}" for v in values)
    return f"{values[0]:,.0f}/s"


def _ratio(ours: tuple[float, ...], theirs: tuple[float, ...] | None, latency: bool) -> str:
    if theirs is None:
        return "-"
    # Always "how many times better taskflow is": higher rate, lower latency.
    pairs = [(t, o) if latency else (o, t) for o, t in zip(ours, theirs, strict=True)]
    return " / ".join(f"{a / b:.2f}x" if b else "-" for a, b in pairs)


def report(args: argparse.Namespace, ours: dict[str, Any], theirs: dict[str, Any] | None) -> None:
    print(
        f"SQLite backends: {args.tasks:,} no-op tasks, {args.samples} latency samples "
        f"after {args.idle:g}s idle; taskflow worker -P {args.processes} -c {args.slots}"
        + (f" --prefetch {args.prefetch}" if args.prefetch is not None else "")
        + (
            f"; huey_consumer -k {args.huey_worker_type} -w {args.processes} -d 0.001 -m 0.02"
            if theirs is not None
            else ""
        )
    )
    header = ["", "taskflow"] + (["huey", "taskflow vs huey"] if theirs is not None else [])
    table = [header]
    for label, values in ours.items():
        latency = label.startswith(("pickup", "CPU"))  # seconds: lower is better
        row = [label, _show(values, latency)]
        if theirs is not None:
            peer = theirs.get(label)
            row += [_show(peer, latency), _ratio(values, peer, latency)]
        table.append(row)
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        cells = [row[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)
        ]
        print("  ".join(cells).rstrip())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--slots", type=int, default=8)
    parser.add_argument("--prefetch", type=int, default=None)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--idle", type=float, default=0.05)
    parser.add_argument("--peer", choices=["huey"], default=None)
    parser.add_argument("--huey-worker-type", choices=["process", "thread"], default="process")
    parser.add_argument("--dir", type=Path, default=None)
    parser.add_argument("--stored-only", action="store_true")
    args = parser.parse_args()
    if args.stored_only and args.peer:
        raise SystemExit("--stored-only measures taskflow alone: leave out --peer")
    if args.peer == "huey":
        try:
            import huey as _  # noqa: F401
        except ImportError:
            raise SystemExit("--peer huey needs huey: pip install -e '.[bench]'") from None
    directory = args.dir or Path(tempfile.mkdtemp(prefix="taskflow-bench-sqlite-"))
    directory.mkdir(parents=True, exist_ok=True)
    try:
        ours = measure(Taskflow(directory, args.slots, args.prefetch, args.processes), args)
        peer = HueyPeer(directory, args.slots, args.huey_worker_type, args.processes)
        theirs = measure(peer, args) if args.peer else None
        report(args, ours, theirs)
    finally:
        if args.dir is None:
            shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    # Run as the importable module, so that task names here and in the workers agree.
    importlib.import_module("bench.sqlite_backend").main()
