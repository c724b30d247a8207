"""Benchmark of the OpenTelemetry instrumentation: a Redis drain with it on and off.

Run from the project root (as a module)::

    python -m bench.otel [--tasks 20000] [--rounds 3] [--slots 8]
                         [--url redis://127.0.0.1:6379/15] [--prefix taskflow-bench-otel]

One worker process (``taskflow worker -c --slots``) drains ``--tasks`` no-op tasks that were
queued while the queue was paused; the clock runs from the resume until every message was
acked. Each round measures both modes, alternating, and the medians are compared:

* ``off``: the worker as it ships (the ``otel`` extra installed, nothing instrumented);
* ``on``: the worker module configures the OpenTelemetry SDK -- a tracer provider whose
  batch processor hands every span to an exporter that drops it, a meter provider with a
  reader -- and calls ``TaskflowInstrumentor().instrument()``; the producer here is
  instrumented too, so every message carries a ``traceparent`` the worker continues.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from taskflow import App
from taskflow.instrumentation import TaskflowInstrumentor

URL = os.environ.get("BENCH_URL", "redis://127.0.0.1:6379/15?prefix=taskflow-bench-otel")
ROOT = Path(__file__).resolve().parents[1]


class DropExporter(SpanExporter):
    """Accepts every span and keeps none (the cost of tracing without the network)."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def instrument() -> tuple[TracerProvider, MeterProvider]:
    """The SDK with a dropping exporter, and taskflow instrumented with it."""
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(BatchSpanProcessor(DropExporter()))
    meter_provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
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


def _worker(url: str, slots: int, mode: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "BENCH_URL": url, "BENCH_OTEL": mode, "PYTHONPATH": str(ROOT)}
    command = [
        sys.executable, "-m", "taskflow.cli.main", "worker", "-A", "bench.otel:app",
        "-c", str(slots), "--loglevel", "warning",
    ]  # fmt: skip
    return subprocess.Popen(command, cwd=ROOT, env=env)


def _depth(bench: App) -> int:
    counts = bench.kernel.call(bench.broker.depth("default"))  # type: ignore[attr-defined]
    return int(counts["ready"] + counts["inflight"] + counts["scheduled"])


def _wait_consumer(bench: App) -> None:
    """Until the worker took a probe message (it is up and fetching)."""
    bench.registry.get("bench.noop").delay()  # type: ignore[union-attr]
    deadline = time.monotonic() + 30
    while _depth(bench) and time.monotonic() < deadline:
        time.sleep(0.01)


def drain(bench: App, url: str, tasks: int, slots: int, mode: str) -> float:
    """Tasks per second one worker process drains in ``mode``."""
    proc = _worker(url, slots, mode)
    providers = instrument() if mode == "on" else None
    try:
        _wait_consumer(bench)
        bench.kernel.call(bench.broker.pause("default"))  # type: ignore[attr-defined]
        task = bench.registry.get("bench.noop")
        for _ in range(0, tasks, 1000):
            bench.enqueue_many([task.s() for _ in range(1000)])  # type: ignore[union-attr]
        started = time.perf_counter()
        bench.kernel.call(bench.broker.resume("default"))  # type: ignore[attr-defined]
        while _depth(bench):
            time.sleep(0.002)
        return tasks / (time.perf_counter() - started)
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
    args = parser.parse_args()
    url = f"{args.url}?prefix={args.prefix}"
    bench = App("bench-otel-client", broker=url)
    bench.task(name="bench.noop", store_result=False)(_noop)
    rates: dict[str, list[float]] = {"off": [], "on": []}
    try:
        for _ in range(args.rounds):
            for mode in ("off", "on"):
                rates[mode].append(drain(bench, url, args.tasks, args.slots, mode))
    finally:
        bench.kernel.call(bench.broker.purge("default"))  # type: ignore[attr-defined]
        bench.close()
    print(f"taskflow otel benchmark: drain of {args.tasks:,} no-op tasks, 1 proc x {args.slots}")
    for mode, runs in rates.items():
        shown = ", ".join(f"{r:,.0f}" for r in runs)
        print(
            f"  instrumentation {mode:<3}  median {statistics.median(runs):,.0f} tasks/s ({shown})"
        )
    ratio = statistics.median(rates["on"]) / statistics.median(rates["off"])
    print(f"  on / off: {ratio:.3f} ({(1 - ratio) * 100:+.1f}% slower)")


if __name__ == "__main__":
    main()
