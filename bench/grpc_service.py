"""Benchmark of the gRPC service: EnqueueTasks throughput and event-stream latency.

Run from the project root (the server and the worker are started as processes)::

    python -m bench.grpc_service [--batches 200] [--batch-size 100] [--events 500]
                                 [--url redis://127.0.0.1:6379/15]

``--batches``/``--batch-size``  EnqueueTasks calls of that many ``bench.noop`` tasks each
                                (JSON arguments), sent one after the other by one client
                                while no worker runs: tasks per second through the service
``--events``   then, with one worker process running, that many single-task sends, each
               timed from the EnqueueTasks call until its finish event arrives on an open
               StreamEvents call: p50/p99/max latency
``--url``      the broker (Redis DB 15 by default, or a ``nats://`` URL); every key or
               stream lives under a fresh prefix, deleted at the end

The server is ``taskflow grpc -A bench.grpc_service:app --insecure-no-auth`` on a free
port; the client is the synchronous grpcio client on one channel.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import grpc

from bench._keys import drop_prefix
from taskflow import App
from taskflow.grpc import pb, pb_grpc

ROOT = Path(__file__).resolve().parents[1]
SPEC = "bench.grpc_service:app"

app = App("grpcbench", broker=os.environ.get("TASKFLOW_BROKER_URL", "memory://"))


@app.task(name="bench.noop")
def noop(i: int) -> int:
    """Return the argument."""
    return i


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    out = log.open("wb")
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "taskflow.cli.main", *args],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    finally:
        out.close()


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait_listening(proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if re.search(r"listening on", log.read_text(errors="replace")):
            return
        if proc.poll() is not None:
            raise SystemExit(f"taskflow grpc exited:\n{log.read_text(errors='replace')}")
        time.sleep(0.1)
    raise SystemExit("taskflow grpc did not start within 60 s")


def _request(i: int) -> pb.TaskRequest:
    return pb.TaskRequest(task="bench.noop", args=[pb.Argument(json=str(i))])


def _throughput(client: pb_grpc.WorkerServiceStub, batches: int, size: int) -> None:
    batch = pb.EnqueueTasksRequest(tasks=[_request(i) for i in range(size)])
    client.EnqueueTasks(batch)  # warm-up: connection, queue declaration
    started = time.perf_counter()
    for _ in range(batches):
        client.EnqueueTasks(batch)
    elapsed = time.perf_counter() - started
    total = batches * size
    print(f"EnqueueTasks: {total} tasks in {batches} calls of {size}: {elapsed:.2f} s")
    print(f"  {total / elapsed:,.0f} tasks/s, {elapsed / batches * 1000:.2f} ms per call")


def _latency(client: pb_grpc.WorkerServiceStub, count: int) -> None:
    stream = client.StreamEvents(pb.StreamEventsRequest(tasks=["bench.noop"], buffer=1000))
    stream.initial_metadata()  # subscribed from here on
    # A first task: the worker notices the listener and the queue is empty after it.
    (first,) = client.EnqueueTasks(pb.EnqueueTasksRequest(tasks=[_request(-1)])).ids
    while next(stream).task_id != first:
        pass
    samples: list[float] = []
    for i in range(count):
        started = time.perf_counter()
        (task_id,) = client.EnqueueTasks(pb.EnqueueTasksRequest(tasks=[_request(i)])).ids
        while next(stream).task_id != task_id:
            pass
        samples.append(time.perf_counter() - started)
    stream.cancel()
    samples.sort()
    p50 = statistics.median(samples) * 1000
    p99 = samples[min(len(samples) - 1, int(len(samples) * 0.99))] * 1000
    print(f"enqueue -> finish event over {count} tasks (one worker process):")
    print(f"  p50 {p50:.2f} ms, p99 {p99:.2f} ms, max {samples[-1] * 1000:.2f} ms")


def main() -> None:
    """Parse the options, run both measurements, print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--events", type=int, default=500)
    parser.add_argument("--url", default="redis://127.0.0.1:6379/15")
    opts = parser.parse_args()
    prefix = f"tfbenchgrpc{uuid.uuid4().hex[:8]}"
    sep = "&" if "?" in opts.url else "?"
    url = f"{opts.url}{sep}prefix={prefix}"
    env = {**os.environ, "TASKFLOW_BROKER_URL": url, "PYTHONPATH": str(ROOT)}
    port = _free_port()
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "grpc.log"
        server = _start(
            ["grpc", "-A", SPEC, "--port", str(port), "--insecure-no-auth", "-l", "warning"],
            env,
            log,
        )
        worker: subprocess.Popen[bytes] | None = None
        try:
            _wait_listening(server, log)
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                client = pb_grpc.WorkerServiceStub(channel)
                _throughput(client, opts.batches, opts.batch_size)
                worker = _start(
                    ["worker", "-A", SPEC, "-c", "8", "-l", "warning"], env, Path(tmp) / "w.log"
                )
                _latency(client, opts.events)
        finally:
            if worker is not None:
                _stop(worker)
            _stop(server)
            drop_prefix(opts.url, prefix)


if __name__ == "__main__":
    main()
