"""Fixtures of the observability tests: SDK providers with an in-memory span exporter and
metric reader, the instrumentor on for one test and off after it."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from taskflow.instrumentation import TaskflowInstrumentor
from tests.conftest import require_service


@dataclass(frozen=True)
class Telemetry:
    """What the instrumentor reported during one test."""

    spans: InMemorySpanExporter
    metrics: InMemoryMetricReader


@pytest.fixture
def telemetry() -> Iterator[Telemetry]:
    """Taskflow instrumented, for the test's duration, with in-memory SDK providers."""
    spans, reader = InMemorySpanExporter(), InMemoryMetricReader()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    meter_provider = MeterProvider(metric_readers=[reader])
    TaskflowInstrumentor().instrument(
        tracer_provider=tracer_provider, meter_provider=meter_provider
    )
    yield Telemetry(spans, reader)
    TaskflowInstrumentor().uninstrument()
    tracer_provider.shutdown()
    meter_provider.shutdown()


@pytest.fixture
def exporter(telemetry: Telemetry) -> InMemorySpanExporter:
    """The spans of the test."""
    return telemetry.spans


@pytest.fixture
def redis_url() -> Iterator[str]:
    """The shared server with a fresh key prefix, whose keys are deleted afterwards."""
    require_service("redis", "127.0.0.1", 6379)
    from tests.integration.redis_helpers import drop_prefix

    prefix = f"tfobs{uuid.uuid4().hex[:10]}"
    url = f"redis://127.0.0.1:6379/0?prefix={prefix}"
    yield url
    drop_prefix(url, prefix)
