"""The least the OpenTelemetry SDK can cost per task attempt, beside the worker's own cost.

Run from the project root (as a module)::

    python -m bench.otel_floor [--attempts 20000] [--rounds 5] [--drain-rounds 3]
                               [--tasks 20000] [--slots 8] [--url redis://127.0.0.1:6379/15]

Two figures from one run:

* **the SDK floor**: the calls the messaging conventions and the metrics of API.md section
  12 oblige an instrumented worker to make for one attempt, in a loop, with no taskflow code
  around them -- extract nothing (the sender's context is built once), start a ``CONSUMER``
  span with the attributes taskflow sets (7 at the start, the outcome at the end) and a link
  to the sender, make it current and restore the previous context, end it, and record the
  two histograms (wait and run time) with their two labels. The SDK is configured as
  ``python -m bench.otel`` configures it (a batch span processor handing spans to an
  exporter that drops them, a meter provider with a reader). CPU time of this process per
  attempt (every thread, so the batch processor's export thread counts too), the lowest of
  ``--rounds`` rounds: the most favourable figure for the SDK;
* **one bare span**: the least any span of the SDK costs -- started and ended, with no
  attributes, no link, no parent and no span processor (lowest of ``--rounds`` rounds);
* **the worker's own cost**: ``python -m bench.otel``'s ``off`` mode (one worker process,
  ``--slots`` slots, drains ``--tasks`` no-ops from Redis, instrumentation off), the median
  CPU time of the worker process per task over ``--drain-rounds`` drains. With
  ``--drain-rounds 0`` this part is skipped (no Redis needed).

The aim of at most 10% slower with instrumentation on needs the instrumentation to cost at
most about a tenth of the worker's CPU per task (the drain is CPU-bound). The last line
compares that budget with the floor: when the floor alone is above the budget, no
instrumentation on this SDK can meet the aim, whatever taskflow does around the calls.
"""

from __future__ import annotations

import argparse
import statistics
import time

from opentelemetry import context, trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import Link, NonRecordingSpan, SpanContext, SpanKind, TraceFlags

from bench.otel import sdk_providers

_NO_CONTEXT = context.Context()


def floor(attempts: int) -> float:
    """Microseconds of CPU per attempt for the SDK calls alone."""
    tracer_provider, meter_provider = sdk_providers()
    try:
        tracer = tracer_provider.get_tracer("taskflow")
        meter = meter_provider.get_meter("taskflow")
        wait = meter.create_histogram("taskflow_task_wait_seconds", "s")
        latency = meter.create_histogram("taskflow_task_latency_seconds", "s")
        labels = {"task": "bench.noop", "queue": "default"}
        sender = SpanContext(
            0x0AF7651916CD43DD8448EB211C80319C,
            0xB7AD6B7169203331,
            is_remote=True,
            trace_flags=TraceFlags(1),
        )
        parent = trace.set_span_in_context(NonRecordingSpan(sender), _NO_CONTEXT)
        shared: dict[str, str | int] = {
            "messaging.system": "taskflow",
            "messaging.operation.type": "process",
            "messaging.operation.name": "process",
            "messaging.destination.name": "default",
            "taskflow.task.name": "bench.noop",
        }
        started = time.process_time()
        for n in range(attempts):
            attributes = shared.copy()
            attributes["messaging.message.id"] = f"5a0b0e4c-8d47-4d3e-9b7c-{n:012d}"
            attributes["taskflow.task.attempt"] = 1
            attributes["taskflow.task.delivery"] = 1
            span = tracer.start_span(
                "process default",
                context=parent,
                kind=SpanKind.CONSUMER,
                attributes=attributes,
                links=[Link(sender)],
            )
            token = context.attach(trace.set_span_in_context(span, parent))
            context.detach(token)
            span.set_attribute("taskflow.task.outcome", "succeeded")
            span.end()
            wait.record(0.001, labels, _NO_CONTEXT)
            latency.record(0.0001, labels, _NO_CONTEXT)
        tracer_provider.force_flush()
        return (time.process_time() - started) / attempts * 1e6
    finally:
        tracer_provider.shutdown()
        meter_provider.shutdown()


def bare_span(attempts: int) -> float:
    """Microseconds of CPU for the least any SDK span costs: started and ended, with no
    attributes, no link, no parent and no span processor at all."""
    tracer_provider = TracerProvider()
    try:
        tracer = tracer_provider.get_tracer("taskflow")
        started = time.process_time()
        for _ in range(attempts):
            tracer.start_span("process default").end()
        return (time.process_time() - started) / attempts * 1e6
    finally:
        tracer_provider.shutdown()


def worker_cost(tasks: int, slots: int, url: str, rounds: int) -> list[float]:
    """CPU microseconds per task of one uninstrumented worker process draining Redis."""
    from bench.otel import _noop, drain
    from taskflow import App

    full = f"{url}?prefix=taskflow-bench-otel-floor"
    client = App("bench-otel-floor-client", broker=full)
    client.task(name="bench.noop", store_result=False)(_noop)
    try:
        return [drain(client, full, tasks, slots, "off")[1] for _ in range(rounds)]
    finally:
        client.kernel.call(client.broker.purge("default"))  # type: ignore[attr-defined]
        client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--attempts", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--drain-rounds", type=int, default=3)
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--slots", type=int, default=8)
    parser.add_argument("--url", default="redis://127.0.0.1:6379/15")
    args = parser.parse_args()
    floors = [floor(args.attempts) for _ in range(args.rounds)]
    low = min(floors)
    shown = ", ".join(f"{f:.1f}" for f in floors)
    print(f"SDK floor per attempt: {low:.1f} us of CPU (lowest of {shown})")
    bare = min(bare_span(args.attempts) for _ in range(args.rounds))
    print(f"one bare SDK span (no attributes, link or processor): {bare:.1f} us of CPU")
    if args.drain_rounds <= 0:
        return
    costs = worker_cost(args.tasks, args.slots, args.url, args.drain_rounds)
    worker = statistics.median(costs)
    shown = ", ".join(f"{c:.1f}" for c in costs)
    print(f"worker, instrumentation off: {worker:.1f} us of CPU per task (median of {shown})")
    budget = worker / 9  # on / off >= 0.9 means on may cost at most a ninth of off
    print(
        f"budget for 'at most 10% slower': {budget:.1f} us per task; the SDK floor is"
        f" {low / budget:.1f}x the budget, one bare span {bare / budget:.1f}x"
    )


if __name__ == "__main__":
    main()
