"""``taskflow worker --metrics-port``: the Prometheus endpoint of a worker, or of all the
processes of a supervised one (needs the ``otel`` extra; imported only with the option).

A single process instruments taskflow with an SDK meter provider whose reader the endpoint
collects on every scrape. A supervisor serves the port itself and merges what its
processes serve on loopback ports they note in a directory it passes them
(``TASKFLOW_METRICS_DIR``), so the port stays the same across restarts of the processes.
The directory is its user's only, and holds a random token the processes' loopback
endpoints ask the supervisor for.
"""

from __future__ import annotations

import os
import secrets
import shutil
import ssl
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from .._tls import server_context
from ..instrumentation import TaskflowInstrumentor
from ..instrumentation.prometheus import (
    TOKEN_FILE,
    MetricsEndpoint,
    directory_token,
    gather,
    register,
    render,
)
from .metrics_options import METRICS_DIR_ENV, MetricsServing
from .supervisor import WORKER_INDEX_ENV

__all__ = ["process_metrics", "supervisor_metrics", "tls_context"]


def tls_context(serving: MetricsServing) -> ssl.SSLContext | None:
    """The server context of ``--metrics-tls-cert/--metrics-tls-key`` (``None`` without);
    a ``ConfigError`` naming the files if they do not make one."""
    if serving.tls_cert is None:
        return None
    return server_context(
        serving.tls_cert,
        serving.tls_key,
        f"--metrics-tls-cert {serving.tls_cert!r} / --metrics-tls-key {serving.tls_key!r}",
    )


def _endpoint(source: Callable[[], str], serving: MetricsServing) -> MetricsEndpoint:
    return MetricsEndpoint(
        source, serving.port, serving.host, token=serving.token, tls=tls_context(serving)
    )


@contextmanager
def process_metrics(serving: MetricsServing) -> Iterator[None]:
    """Instrument taskflow and serve its metrics as ``serving`` says (or, in a supervised
    process, on a loopback port noted for the supervisor) until the block ends."""
    reader = InMemoryMetricReader()

    def source() -> str:
        return render(reader.get_metrics_data())

    directory = os.environ.get(METRICS_DIR_ENV)
    # The endpoint first: a port in use (or bad TLS files) leaves nothing instrumented.
    if directory:
        endpoint = MetricsEndpoint(source, 0, "127.0.0.1", token=directory_token(directory))
    else:
        endpoint = _endpoint(source, serving)
    provider = MeterProvider(metric_readers=[reader])
    TaskflowInstrumentor().instrument(meter_provider=provider)
    if directory:  # scraped from now on
        register(directory, os.environ.get(WORKER_INDEX_ENV, "1"), endpoint.port)
    try:
        yield
    finally:
        endpoint.close()
        TaskflowInstrumentor().uninstrument()
        provider.shutdown()


@contextmanager
def supervisor_metrics(serving: MetricsServing) -> Iterator[dict[str, str]]:
    """Serve the merged metrics of the supervised processes as ``serving`` says; yields
    the environment the processes need."""
    directory = tempfile.mkdtemp(prefix="taskflow-metrics-")  # mode 0700
    token = os.path.join(directory, TOKEN_FILE)
    with open(os.open(token, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as handle:
        handle.write(secrets.token_urlsafe(32))
    try:
        endpoint = _endpoint(lambda: gather(directory), serving)
    except BaseException:
        shutil.rmtree(directory, ignore_errors=True)
        raise
    try:
        yield {**os.environ, METRICS_DIR_ENV: directory}
    finally:
        endpoint.close()
        shutil.rmtree(directory, ignore_errors=True)
