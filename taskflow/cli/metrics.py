"""``taskflow worker --metrics-port``: the Prometheus endpoint of a worker, or of all the
processes of a supervised one (needs the ``otel`` extra; imported only with the option).

A single process instruments taskflow with an SDK meter provider whose reader the endpoint
collects on every scrape. A supervisor serves the port itself and merges what its
processes serve on loopback ports they note in a directory it passes them
(``TASKFLOW_METRICS_DIR``), so the port stays the same across restarts of the processes.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from ..instrumentation import TaskflowInstrumentor
from ..instrumentation.prometheus import MetricsEndpoint, gather, register, render
from .supervisor import WORKER_INDEX_ENV

__all__ = ["METRICS_DIR_ENV", "process_metrics", "supervisor_metrics"]

METRICS_DIR_ENV = "TASKFLOW_METRICS_DIR"


@contextmanager
def process_metrics(port: int) -> Iterator[None]:
    """Instrument taskflow and serve its metrics on ``port`` (or, in a supervised
    process, on a loopback port noted for the supervisor) until the block ends."""
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    TaskflowInstrumentor().instrument(meter_provider=provider)
    directory = os.environ.get(METRICS_DIR_ENV)
    if directory:
        endpoint = MetricsEndpoint(lambda: render(reader.get_metrics_data()), 0, "127.0.0.1")
        register(directory, os.environ.get(WORKER_INDEX_ENV, "1"), endpoint.port)
    else:
        endpoint = MetricsEndpoint(lambda: render(reader.get_metrics_data()), port)
    try:
        yield
    finally:
        endpoint.close()
        TaskflowInstrumentor().uninstrument()
        provider.shutdown()


@contextmanager
def supervisor_metrics(port: int) -> Iterator[dict[str, str]]:
    """Serve the merged metrics of the supervised processes on ``port``; yields the
    environment the processes need."""
    directory = tempfile.mkdtemp(prefix="taskflow-metrics-")
    endpoint = MetricsEndpoint(lambda: gather(directory), port)
    try:
        yield {**os.environ, METRICS_DIR_ENV: directory}
    finally:
        endpoint.close()
        shutil.rmtree(directory, ignore_errors=True)
