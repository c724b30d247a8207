"""Benchmark of the OpenTelemetry instrumentation: a Redis drain with it on and off.

Run from the project root (as a module)::

    python -m bench.otel [--tasks 20000] [--rounds 3] [--slots 8]
                         [--url redis://127.0.0.1:6379/15] [--prefix taskflow-bench-otel]
                         [--baseline REV]

One worker process (``taskflow worker -c --slots``) drains ``--tasks`` no-op tasks that were
queued while the queue was paused; the clock runs from the resume until every message was
acked. Each round measures both modes, alternating, and the medians are compared: the
rate, and the CPU time of the worker process (all its threads, user and system) per task
over the same interval, which other load on the machine disturbs less than the rate:

* ``off``: the worker as it ships (the ``otel`` extra installed, nothing instrumented);
* ``on``: the worker module configures the OpenTelemetry SDK -- a tracer provider whose
  batch processor hands every span to an exporter that drops it, a meter provider with a
  reader -- and calls ``TaskflowInstrumentor().instrument()``; the producer here is
  instrumented too, so every message carries a ``traceparent`` the worker continues.

With ``--baseline REV`` (e.g. ``b491013``, the commit before the instrumentation) each round
also drains with the worker of that revision: its ``taskflow/`` is exported (``git
archive``, the checkout is not touched) into a temporary directory, and the worker runs
from there with ``PYTHONPATH`` pointing at it. That round compares the two off modes
through the same app module (``off`` then uses it too, so both load the same code apart
from ``taskflow``); the temporary directory is removed at the end.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import psutil  # type: ignore[import-untyped, unused-ignore]
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from taskflow import App
from taskflow.instrumentation import TaskflowInstrumentor

URL = os.environ.get("BENCH_URL", "redis://127.0.0.1:6379/15?prefix=taskflow-bench-otel")
ROOT = Path(__file__).resolve().parents[1]
_QUEUE_SIZE = 1 << 17


class DropExporter(SpanExporter):
    """Accepts every span and keeps none (the cost of tracing without the network)."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def sdk_providers() -> tuple[TracerProvider, MeterProvider]:
    """The SDK as the benchmarks configure it: a batch span processor handing every span
    to a dropping exporter, and a meter provider with a reader."""
    tracer_provider = TracerProvider()
    # A queue large enough that no span is dropped at these rates (the default of 2,048
    # overflows while the worker's loop holds the GIL); export in batches of 2,048.
    processor = BatchSpanProcessor(
        DropExporter(), max_queue_size=_QUEUE_SIZE, max_export_batch_size=2048
    )
    tracer_provider.add_span_processor(processor)
    return tracer_provider, MeterProvider(metric_readers=[InMemoryMetricReader()])


def instrument() -> tuple[TracerProvider, MeterProvider]:
    """The SDK with a dropping exporter, and taskflow instrumented with it."""
    tracer_provider, meter_provider = sdk_providers()
    TaskflowInstrumentor().instrument(
        tracer_provider=tracer_provider, meter_provider=meter_provider
    )
    return tracer_provider, meter_provider


async def _noop() -> None:
    """Does nothing."""


if os.environ.get("BENCH_OTEL") == "on":
    instrument()
app = App("bench-otel", broker=URL)
app.task(name="bench.noop", store_result=False)(_noop)


# The app the off modes of a --baseline run load: the same module for both trees, written
# next to the exported revision (it imports nothing of the benchmark).
_PLAIN_APP = """import os
from taskflow import App

app = App("bench-otel", broker=os.environ["BENCH_URL"])


async def _noop() -> None:
    pass


app.task(name="bench.noop", store_result=False)(_noop)
"""


class Baseline:
    """``taskflow/`` of a git revision, exported into a temporary directory, with the plain
    app module beside it."""

    def __init__(self, rev: str) -> None:
        self.rev = rev
        self.root = Path(tempfile.mkdtemp(prefix="taskflow-bench-base-"))
        self.apps = self.root / "apps"
        self.tree = self.root / "tree"
        try:
            archive = subprocess.run(
                ["git", "-C", str(ROOT), "archive", "--format=tar", rev, "taskflow"],
                check=True,
                capture_output=True,
            ).stdout
            with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
                tar.extractall(self.tree, filter="data")
            self.apps.mkdir()
            (self.apps / "tfbench_otel_app.py").write_text(_PLAIN_APP)
        except BaseException:
            self.remove()
            raise

    def remove(self) -> None:
        """Delete the exported tree."""
        shutil.rmtree(self.root, ignore_errors=True)


def _worker(
    url: str, slots: int, mode: str, baseline: Baseline | None = None
) -> subprocess.Popen[bytes]:
    """The worker process of ``mode``: ``on``/``off`` run this tree with ``bench.otel:app``;
    with a baseline, ``off`` and ``base`` run the plain app on this tree and on the
    baseline's (``python -m`` puts the working directory first on the path)."""
    env = {**os.environ, "BENCH_URL": url, "BENCH_OTEL": mode, "PYTHONPATH": str(ROOT)}
    module, cwd = "bench.otel:app", ROOT
    if baseline is not None and mode in ("off", "base"):
        module = "tfbench_otel_app:app"
        cwd = baseline.tree if mode == "base" else ROOT
        env["PYTHONPATH"] = os.pathsep.join([str(cwd), str(baseline.apps)])
    command = [
        sys.executable, "-m", "taskflow.cli.main", "worker", "-A", module,
        "-c", str(slots), "--loglevel", "warning",
    ]  # fmt: skip
    return subprocess.Popen(command, cwd=cwd, env=env)


def _depth(bench: App) -> int:
    counts = bench.kernel.call(bench.broker.depth("default"))  # type: ignore[attr-defined]
    return int(counts["ready"] + counts["inflight"] + counts["scheduled"])


def _wait_consumer(bench: App) -> None:
    """Until the worker took a probe message (it is up and fetching)."""
    bench.registry.get("bench.noop").delay()  # type: ignore[union-attr]
    deadline = time.monotonic() + 30
    while _depth(bench) and time.monotonic() < deadline:
        time.sleep(0.01)


def _cpu(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


def drain(
    bench: App, url: str, tasks: int, slots: int, mode: str, baseline: Baseline | None = None
) -> tuple[float, float]:
    """Tasks per second one worker process drains in ``mode``, and the microseconds of CPU
    that process spent per task meanwhile."""
    proc = _worker(url, slots, mode, baseline)
    providers = instrument() if mode == "on" else None
    try:
        _wait_consumer(bench)
        bench.kernel.call(bench.broker.pause("default"))  # type: ignore[attr-defined]
        task = bench.registry.get("bench.noop")
        for _ in range(0, tasks, 1000):
            bench.enqueue_many([task.s() for _ in range(1000)])  # type: ignore[union-attr]
        worker = psutil.Process(proc.pid)
        cpu, started = _cpu(worker), time.perf_counter()
        bench.kernel.call(bench.broker.resume("default"))  # type: ignore[attr-defined]
        while _depth(bench):
            time.sleep(0.002)
        elapsed, cpu = time.perf_counter() - started, _cpu(worker) - cpu
        return tasks / elapsed, cpu / tasks * 1e6
    finally:
        if providers is not None:
            TaskflowInstrumentor().uninstrument()
            for provider in providers:
                provider.shutdown()
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--slots", type=int, default=8)
    parser.add_argument("--url", default="redis://127.0.0.1:6379/15")
    parser.add_argument("--prefix", default="taskflow-bench-otel")
    parser.add_argument(
        "--baseline",
        metavar="REV",
        help="also drain with the worker of this git revision, instrumentation off",
    )
    args = parser.parse_args()
    url = f"{args.url}?prefix={args.prefix}"
    bench = App("bench-otel-client", broker=url)
    bench.task(name="bench.noop", store_result=False)(_noop)
    baseline = Baseline(args.baseline) if args.baseline else None
    modes = ("off", "on", "base") if baseline is not None else ("off", "on")
    rates: dict[str, list[float]] = {mode: [] for mode in modes}
    cpus: dict[str, list[float]] = {mode: [] for mode in modes}
    try:
        for _ in range(args.rounds):
            for mode in modes:
                rate, cpu = drain(bench, url, args.tasks, args.slots, mode, baseline)
                rates[mode].append(rate)
                cpus[mode].append(cpu)
    finally:
        bench.kernel.call(bench.broker.purge("default"))  # type: ignore[attr-defined]
        bench.close()
        if baseline is not None:
            baseline.remove()
    print(f"taskflow otel benchmark: drain of {args.tasks:,} no-op tasks, 1 proc x {args.slots}")
    labels = {"off": "instrumentation off", "on": "instrumentation on"}
    if baseline is not None:
        labels["base"] = f"baseline {baseline.rev} (off)"
    for mode, runs in rates.items():
        shown = ", ".join(f"{r:,.0f}" for r in runs)
        cpu = statistics.median(cpus[mode])
        print(
            f"  {labels[mode]:<30} median {statistics.median(runs):,.0f} tasks/s ({shown}),"
            f" worker CPU {cpu:.1f} us/task"
        )
    off = statistics.median(rates["off"])
    ratio = statistics.median(rates["on"]) / off
    print(f"  on / off: {ratio:.3f} ({(1 - ratio) * 100:+.1f}% slower)")
    extra = statistics.median(cpus["on"]) - statistics.median(cpus["off"])
    print(f"  instrumentation CPU: {extra:+.1f} us/task (on - off, worker process)")
    if baseline is not None:
        ratio = off / statistics.median(rates["base"])
        print(f"  off / baseline: {ratio:.3f} ({(1 - ratio) * 100:+.1f}% slower)")


if __name__ == "__main__":
    main()
