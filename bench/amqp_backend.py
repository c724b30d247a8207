"""Benchmark of the RabbitMQ broker: taskflow beside Celery on the same RabbitMQ.

Run from the project root (as a module, so that ``bench`` is importable)::

    python -m bench.amqp_backend [--tasks 10000] [--samples 100] [--slots 8]
                                 [--idle 0.05] [--peer celery|none] [--url URL]

``--tasks``    no-op tasks per drain measurement (default 10,000)
``--samples``  pickup-latency samples (one task at a time on an idle, warm worker)
``--slots``    worker concurrency (taskflow ``-c``; Celery ``-c`` with the prefork pool)
``--idle``     seconds the worker is left idle before each latency sample
``--peer``     ``celery`` (default): the same workload on Celery in the same run
               (``pip install -e '.[bench]'``); ``none``: taskflow only
``--url``      the RabbitMQ server (default ``amqp://guest:guest@127.0.0.1:5672``)

The workload is the same for both: a synchronous no-op task, no result stored
(taskflow ``store_result=False``; Celery ``ignore_result=True``), one worker process, one
fresh queue per run, deleted afterwards. Measured:

* drain rate: the queue is filled first (a stamp task, the no-ops, a second stamp task),
  then the worker starts; the clock runs from the body of the first stamp to the body of
  the last one;
* worker CPU per task over the same stretch: user plus system time of the worker process
  and its children (Celery's pool) divided by the tasks -- steadier than the rate on a
  busy machine (needs ``psutil``, a dev dependency; ``-`` without it);
* pickup latency p50/p99: from sending in this process to the task body starting in a
  worker that was idle for ``--idle`` seconds.

One run of each; the figures of a busy machine say little (see docs/performance.md).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from taskflow import App
from taskflow.urls import mask_url

ROOT = Path(__file__).resolve().parents[1]
URL = os.environ.get("BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672")
QUEUE = os.environ.get("BENCH_AMQP_QUEUE", "bench")
BATCH = 1000


def _noop() -> None:
    """Does nothing."""


def _stamp(path: str) -> None:
    """Append the time the body started to ``path`` (one line)."""
    with open(path, "a", encoding="ascii") as out:
        out.write(f"{time.time()!r}\n")


def build_app(url: str, queue: str = QUEUE) -> App:
    """The taskflow side: a no-op and a stamp task on ``queue``, no results stored."""
    bench = App("bench", broker=url, default_queue=queue)
    bench.task(name="bench.noop", store_result=False)(_noop)
    bench.task(name="bench.stamp", store_result=False)(_stamp)
    return bench


def build_celery(url: str, queue: str = QUEUE) -> Any:
    """The Celery side: the same two tasks on ``queue``, results ignored."""
    from celery import Celery  # type: ignore[import-untyped]

    peer = Celery("bench", broker=url.rstrip("/") + "//")
    peer.conf.update(
        task_default_queue=queue,
        task_ignore_result=True,
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
    )
    peer.task(name="bench.noop")(_noop)
    peer.task(name="bench.stamp")(_stamp)
    return peer


app = build_app(URL)
celery_app = build_celery(URL) if os.environ.get("BENCH_AMQP_PEER") == "celery" else None


# -- the two systems ---------------------------------------------------------------------
class System:
    """One task queue under test: how to send, and how to run its worker."""

    name = ""

    def __init__(self, url: str, slots: int, directory: Path) -> None:
        self.url = url
        self.slots = slots
        self.directory = directory
        self.queue = f"bench-{self.name}-{uuid.uuid4().hex[:8]}"

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "BENCH_AMQP_URL": self.url,
            "BENCH_AMQP_QUEUE": self.queue,
            "PYTHONPATH": str(ROOT),
        }

    def send(self, name: str, *args: Any) -> None:
        raise NotImplementedError

    def send_noops(self, count: int) -> None:
        raise NotImplementedError

    def worker(self) -> subprocess.Popen[bytes]:
        raise NotImplementedError

    def close(self) -> None:
        """Delete the queue and release connections."""


class Taskflow(System):
    name = "taskflow"

    def __init__(self, url: str, slots: int, directory: Path) -> None:
        super().__init__(url, slots, directory)
        self.prefix = f"bench{uuid.uuid4().hex[:8]}"
        self.full_url = f"{url}?prefix={self.prefix}"
        self.app = build_app(self.full_url, self.queue)

    def env(self) -> dict[str, str]:
        return {**super().env(), "BENCH_AMQP_URL": self.full_url}

    def send(self, name: str, *args: Any) -> None:
        self.app.send_task(name, args=args)

    def send_noops(self, count: int) -> None:
        noop: Any = self.app.registry.get("bench.noop")
        assert noop is not None
        for start in range(0, count, BATCH):
            self.app.enqueue_many([noop.s() for _ in range(min(BATCH, count - start))])

    def worker(self) -> subprocess.Popen[bytes]:
        command = [
            sys.executable, "-m", "taskflow.cli.main", "worker", "-A", "bench.amqp_backend:app",
            "-c", str(self.slots), "--loglevel", "warning",
        ]  # fmt: skip
        return subprocess.Popen(command, cwd=ROOT, env=self.env())

    def close(self) -> None:
        broker: Any = self.app.broker
        self.app.kernel.call(broker.purge(self.queue))
        self.app.close()
        _delete(
            self.url,
            [f"{self.prefix}.q.{self.queue}", f"{self.prefix}.dead.{self.queue}"],
            exchanges=(f"{self.prefix}.control",),
        )


class CeleryPeer(System):
    name = "celery"

    def __init__(self, url: str, slots: int, directory: Path) -> None:
        super().__init__(url, slots, directory)
        self.app = build_celery(url, self.queue)

    def env(self) -> dict[str, str]:
        return {**super().env(), "BENCH_AMQP_PEER": "celery"}

    def send(self, name: str, *args: Any) -> None:
        self.app.send_task(name, args=args, queue=self.queue)

    def send_noops(self, count: int) -> None:
        with self.app.producer_or_acquire() as producer:
            for _ in range(count):
                self.app.send_task("bench.noop", queue=self.queue, producer=producer)

    def worker(self) -> subprocess.Popen[bytes]:
        command = [
            sys.executable, "-m", "celery", "-A", "bench.amqp_backend:celery_app", "worker",
            "-c", str(self.slots), "-P", "prefork", "-Q", self.queue, "--loglevel", "warning",
            "--without-gossip", "--without-mingle", "--without-heartbeat",
        ]  # fmt: skip
        return subprocess.Popen(command, cwd=ROOT, env=self.env())

    def close(self) -> None:
        _delete(self.url, [self.queue], exchanges=(self.queue,))


def _delete(url: str, queues: list[str], exchanges: tuple[str, ...] = ()) -> None:
    from kombu import connection

    client: Any = connection.Connection
    with client(url) as conn:
        channel = conn.channel()
        for name in queues:
            channel.queue_delete(name)
        for name in exchanges:
            channel.exchange_delete(name)


# -- measurements ------------------------------------------------------------------------
def _wait_lines(path: Path, count: int, timeout: float = 300.0) -> list[float]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            lines = path.read_text(encoding="ascii").split()
            if len(lines) >= count:
                return [float(x) for x in lines]
        time.sleep(0.005)
    raise TimeoutError(f"{count} stamps did not come within {timeout}s")


def _cpu(pid: int) -> float | None:
    """CPU seconds (user + system) of process ``pid`` and its children so far; None
    without psutil."""
    try:
        import psutil  # type: ignore[import-untyped, unused-ignore]
    except ImportError:
        return None
    root = psutil.Process(pid)
    total = 0.0
    for process in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            times = process.cpu_times()
            total += times.user + times.system
    return total


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def measure(system: System, tasks: int, samples: int, idle: float) -> dict[str, float]:
    """Drain rate (tasks/s), worker CPU per task (µs) and pickup latency p50/p99 (ms) of
    ``system``."""
    drain = system.directory / f"{system.name}-drain"
    system.send("bench.stamp", str(drain))
    system.send_noops(tasks)
    system.send("bench.stamp", str(drain))
    proc = system.worker()
    try:
        _wait_lines(drain, 1)
        cpu_first = _cpu(proc.pid)
        first, last = _wait_lines(drain, 2)
        cpu_last = _cpu(proc.pid)
        rate = tasks / max(last - first, 1e-9)
        cpu = math.nan
        if cpu_first is not None and cpu_last is not None:
            cpu = (cpu_last - cpu_first) / tasks * 1e6
        pickup = system.directory / f"{system.name}-pickup"
        latencies = []
        for i in range(samples):
            time.sleep(idle)  # the worker is idle when the task is sent
            sent = time.time()
            system.send("bench.stamp", str(pickup))
            latencies.append(_wait_lines(pickup, i + 1)[i] - sent)
    finally:
        _stop(proc)
    cuts = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else latencies * 99
    return {"drain": rate, "cpu": cpu, "p50": cuts[49] * 1000, "p99": cuts[98] * 1000}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--slots", type=int, default=8)
    parser.add_argument("--idle", type=float, default=0.05)
    parser.add_argument("--peer", choices=["celery", "none"], default="celery")
    parser.add_argument("--url", default=URL)
    args = parser.parse_args()
    kinds: list[type[System]] = [Taskflow] + ([CeleryPeer] if args.peer == "celery" else [])
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="tf-bench-amqp-") as directory:
        for kind in kinds:
            system = kind(args.url, args.slots, Path(directory))
            try:
                results[kind.name] = measure(system, args.tasks, args.samples, args.idle)
            finally:
                system.close()
    where = mask_url(args.url)
    print(f"{args.tasks} no-op tasks, {args.slots} slots, 1 worker process, {where}")
    print(f"{'':10} {'drain/s':>10} {'cpu us/task':>12} {'pickup p50 ms':>14} {'p99 ms':>8}")
    for name, got in results.items():
        cpu = "-" if math.isnan(got["cpu"]) else f"{got['cpu']:.0f}"
        print(f"{name:10} {got['drain']:10.0f} {cpu:>12} {got['p50']:14.1f} {got['p99']:8.1f}")


if __name__ == "__main__":
    main()
