"""Spans of sends and attempts, with the SDK's in-memory exporter, on the memory broker."""

from __future__ import annotations

import re
from collections.abc import Sequence
from importlib.metadata import entry_points

import pytest
from opentelemetry import baggage, propagate, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased
from opentelemetry.trace import SpanKind, StatusCode

from taskflow import App, Retry, TaskContext
from taskflow.codec import decode_envelope
from taskflow.errors import QueueFull, TaskFailed
from taskflow.instrumentation import TaskflowInstrumentor
from taskflow.instrumentation._tracing import Extractor

SECRET = "s3cr3t-argument-4e2a"
TRACEPARENT = re.compile(r"^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")


def _kind(spans: Sequence[ReadableSpan], kind: SpanKind) -> list[ReadableSpan]:
    return [span for span in spans if span.kind is kind]


def _queued_headers(app: App) -> dict[str, str]:
    peeked = app.kernel.call(app.broker.peek("default", 10))
    assert len(peeked) == 1
    headers: dict[str, str] = decode_envelope(peeked[0]).headers
    return headers


def test_a_send_and_its_attempt_are_one_trace(exporter: InMemorySpanExporter, app: App) -> None:
    @app.task(name="obs.add")
    def add(x: int, y: int) -> int:
        return x + y

    handle = add.delay(2, 3)
    app.worker().run_until_idle()

    assert handle.get(timeout=5) == 5
    spans = exporter.get_finished_spans()
    (send,) = _kind(spans, SpanKind.PRODUCER)
    (process,) = _kind(spans, SpanKind.CONSUMER)
    assert send.name == "send default" and process.name == "process default"
    assert process.context.trace_id == send.context.trace_id
    assert process.parent is not None and process.parent.span_id == send.context.span_id
    assert [link.context.span_id for link in process.links] == [send.context.span_id]
    assert send.attributes == {
        "messaging.system": "taskflow",
        "messaging.operation.type": "send",
        "messaging.operation.name": "send",
        "messaging.destination.name": "default",
        "messaging.message.id": handle.id,
        "taskflow.task.name": "obs.add",
        "taskflow.task.attempt": 1,
    }
    assert process.attributes is not None
    assert process.attributes["messaging.operation.type"] == "process"
    assert process.attributes["messaging.message.id"] == handle.id
    assert process.attributes["taskflow.task.outcome"] == "succeeded"
    assert process.status.status_code is StatusCode.UNSET


def test_the_context_travels_as_a_w3c_traceparent_header(
    exporter: InMemorySpanExporter, app: App
) -> None:
    @app.task(name="obs.noop")
    def noop() -> None:
        return None

    noop.apply_async(headers={"mine": "kept"})

    headers = _queued_headers(app)
    (send,) = exporter.get_finished_spans()
    assert headers["mine"] == "kept"
    assert TRACEPARENT.match(headers["traceparent"])
    assert headers["traceparent"].split("-")[1] == f"{send.context.trace_id:032x}"
    assert headers["traceparent"].split("-")[2] == f"{send.context.span_id:016x}"


def test_enqueue_many_opens_one_producer_span_per_message(
    exporter: InMemorySpanExporter, app: App
) -> None:
    @app.task(name="obs.one")
    def one(i: int) -> int:
        return i

    handles = app.enqueue_many([one.s(i) for i in range(3)])
    app.worker().run_until_idle()

    spans = exporter.get_finished_spans()
    sends, processes = _kind(spans, SpanKind.PRODUCER), _kind(spans, SpanKind.CONSUMER)
    assert len(sends) == len(processes) == 3
    ids = {span.attributes["messaging.message.id"] for span in sends if span.attributes}
    assert ids == {h.id for h in handles}
    parents = {p.parent.span_id for p in processes if p.parent is not None}
    assert parents == {s.context.span_id for s in sends}


def test_a_failure_is_recorded_on_the_attempt_span(
    exporter: InMemorySpanExporter, app: App
) -> None:
    @app.task(name="obs.fails")
    def fails() -> None:
        raise RuntimeError("it broke")

    fails.delay()
    app.worker().run_until_idle()

    (process,) = _kind(exporter.get_finished_spans(), SpanKind.CONSUMER)
    assert process.status.status_code is StatusCode.ERROR
    assert process.attributes is not None
    assert process.attributes["taskflow.task.outcome"] == "failed"
    (event,) = process.events
    assert event.name == "exception"
    assert event.attributes is not None
    assert event.attributes["exception.type"] == "RuntimeError"


def test_retries_are_attempts_of_the_same_trace(exporter: InMemorySpanExporter, app: App) -> None:
    @app.task(name="obs.flaky", retries=2, bind=True)
    def flaky(ctx: TaskContext) -> int:
        if ctx.attempt < 3:
            raise Retry(countdown=0)
        return ctx.attempt

    handle = flaky.delay()
    app.worker().run_until_idle()

    assert handle.get(timeout=5) == 3
    spans = exporter.get_finished_spans()
    (send,) = _kind(spans, SpanKind.PRODUCER)
    processes = _kind(spans, SpanKind.CONSUMER)
    attempts = [(p.attributes or {}).get("taskflow.task.attempt") for p in processes]
    outcomes = [(p.attributes or {}).get("taskflow.task.outcome") for p in processes]
    assert attempts == [1, 2, 3]
    assert outcomes == ["retried", "retried", "succeeded"]
    assert {p.context.trace_id for p in processes} == {send.context.trace_id}


def test_no_payload_value_appears_in_any_span(exporter: InMemorySpanExporter, app: App) -> None:
    @app.task(name="obs.secret")
    def secret(value: str, flag: bool) -> str:
        if flag:
            raise ValueError("rejected")
        return value.upper()

    secret.delay(SECRET, False)
    secret.delay(SECRET, True)
    app.worker().run_until_idle()

    spans = exporter.get_finished_spans()
    assert len(spans) == 4
    dumped = "".join(span.to_json() for span in spans)
    assert SECRET not in dumped and SECRET.upper() not in dumped


def test_instrument_and_uninstrument_may_be_repeated(
    exporter: InMemorySpanExporter, app: App
) -> None:
    @app.task(name="obs.twice")
    def twice() -> None:
        return None

    TaskflowInstrumentor().instrument()  # already on: nothing changes
    twice.delay()
    assert len(exporter.get_finished_spans()) == 1
    app.worker().run_until_idle()

    TaskflowInstrumentor().uninstrument()
    TaskflowInstrumentor().uninstrument()
    exporter.clear()
    twice.delay()
    assert "traceparent" not in _queued_headers(app)
    app.worker().run_until_idle()
    assert exporter.get_finished_spans() == ()


def test_a_worker_built_before_uninstrument_stops_tracing(
    exporter: InMemorySpanExporter, app: App
) -> None:
    @app.task(name="obs.late")
    def late() -> None:
        return None

    worker = app.worker()
    TaskflowInstrumentor().uninstrument()
    late.delay()
    worker.run_until_idle()

    assert exporter.get_finished_spans() == ()


def test_the_instrumentor_is_registered_for_opentelemetry_instrument() -> None:
    (entry,) = [e for e in entry_points(group="opentelemetry_instrumentor") if e.name == "taskflow"]

    assert entry.load() is TaskflowInstrumentor


@pytest.mark.parametrize("kind", ["async def", "def"])
def test_a_task_sent_from_a_body_is_a_child_of_its_attempt(
    exporter: InMemorySpanExporter, app: App, kind: str
) -> None:
    @app.task(name="obs.leaf")
    def leaf() -> None:
        return None

    async def parent_async() -> None:
        await leaf.adelay()

    def parent_sync() -> None:
        leaf.delay()  # on a thread of the worker: the attempt's span is current there too

    parent = app.task(name="obs.parent")(parent_async if kind == "async def" else parent_sync)
    parent.delay()
    app.worker().run_until_idle()

    spans = exporter.get_finished_spans()
    by_task = {(s.kind, (s.attributes or {}).get("taskflow.task.name")): s for s in spans}
    attempt = by_task[SpanKind.CONSUMER, "obs.parent"]
    child_send = by_task[SpanKind.PRODUCER, "obs.leaf"]
    assert child_send.parent is not None and child_send.parent.span_id == attempt.context.span_id
    assert by_task[SpanKind.CONSUMER, "obs.leaf"].context.trace_id == attempt.context.trace_id


def test_an_exception_whose_str_fails_is_recorded_on_the_span_and_as_the_failure(
    exporter: InMemorySpanExporter, app: App
) -> None:
    class Unprintable(Exception):
        def __str__(self) -> str:
            raise RuntimeError("no message")

    @app.task(name="obs.unprintable", retries=0)
    def unprintable() -> None:
        raise Unprintable

    result = unprintable.delay()
    app.worker().run_until_idle()

    with pytest.raises(TaskFailed) as caught:
        result.get(timeout=1)
    assert caught.value.exc_type.endswith("Unprintable")  # not the instrumentation's error
    (attempt,) = [s for s in exporter.get_finished_spans() if s.kind == SpanKind.CONSUMER]
    assert attempt.status.status_code == StatusCode.ERROR
    (event,) = attempt.events
    assert event.name == "exception"
    assert (event.attributes or {})["exception.message"] == "<exception str() failed: Unprintable>"


def test_every_step_of_a_chain_is_sent_and_processed_in_spans(
    exporter: InMemorySpanExporter, app: App
) -> None:
    @app.task(name="obs.inc")
    def inc(x: int) -> int:
        return x + 1

    result = (inc.s(1) | inc.s() | inc.s()).apply_async()
    worker = app.worker()
    worker.run_until_idle()

    assert result.get(timeout=5) == 4
    spans = exporter.get_finished_spans()
    assert len(_kind(spans, SpanKind.PRODUCER)) >= 3
    assert len(_kind(spans, SpanKind.CONSUMER)) == 3


def test_a_send_that_fails_is_recorded_on_its_span(exporter: InMemorySpanExporter) -> None:
    with App("bounded", max_queued=1) as app:

        @app.task(name="obs.bounded")
        def bounded() -> None:
            return None

        bounded.delay()
        with pytest.raises(QueueFull):
            bounded.delay()

    sent, refused = exporter.get_finished_spans()
    assert sent.status.status_code is StatusCode.UNSET
    assert refused.status.status_code is StatusCode.ERROR
    assert [e.name for e in refused.events] == ["exception"]


def test_uninstrument_reaches_a_worker_that_is_already_running(
    exporter: InMemorySpanExporter, app: App
) -> None:
    @app.task(name="obs.running")
    def running() -> int:
        return 1

    with app.worker():
        assert running.delay().get(timeout=5) == 1
        assert len(_kind(exporter.get_finished_spans(), SpanKind.CONSUMER)) == 1
        TaskflowInstrumentor().uninstrument()
        exporter.clear()
        assert running.delay().get(timeout=5) == 1

    assert exporter.get_finished_spans() == ()


def test_a_send_sampled_out_is_not_traced_in_the_worker_either(app: App) -> None:
    spans = InMemorySpanExporter()
    provider = TracerProvider(sampler=ParentBased(ALWAYS_OFF))
    provider.add_span_processor(SimpleSpanProcessor(spans))
    TaskflowInstrumentor().instrument(tracer_provider=provider)
    try:

        @app.task(name="obs.sampled")
        def sampled() -> None:
            return None

        sampled.delay()
        flags = int(_queued_headers(app)["traceparent"].rsplit("-", 1)[1], 16)
        assert flags & 1 == 0  # not sampled
        app.worker().run_until_idle()
    finally:
        TaskflowInstrumentor().uninstrument()
        provider.shutdown()

    assert spans.get_finished_spans() == ()


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"},
        {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"},
        {
            "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "tracestate": "vendor=opaque,other=1",
        },
        {"traceparent": "00-00000000000000000000000000000000-b7ad6b7169203331-01"},
        {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01"},
        {"traceparent": "00-0AF7651916CD43DD8448EB211C80319C-B7AD6B7169203331-01"},
        {"traceparent": "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra"},
        {"traceparent": "garbage"},
        {
            "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "baggage": "user=1",
        },
    ],
)
def test_the_sender_context_is_read_as_the_global_propagator_reads_it(
    headers: dict[str, str],
) -> None:
    ours, theirs = Extractor().extract(headers), propagate.extract(headers)

    assert (
        trace.get_current_span(ours).get_span_context()
        == trace.get_current_span(theirs).get_span_context()
    )
    assert baggage.get_all(ours) == baggage.get_all(theirs)


def test_with_a_no_op_tracer_there_are_no_spans_and_the_metrics_still_count(app: App) -> None:
    reader = InMemoryMetricReader()
    meters = MeterProvider(metric_readers=[reader])
    TaskflowInstrumentor().instrument(
        tracer_provider=trace.NoOpTracerProvider(), meter_provider=meters
    )
    try:

        @app.task(name="obs.untraced")
        def untraced() -> int:
            return 1

        handle = untraced.delay()
        assert "traceparent" not in _queued_headers(app)
        app.worker().run_until_idle()
        assert handle.get(timeout=5) == 1
        data = reader.get_metrics_data()
    finally:
        TaskflowInstrumentor().uninstrument()
        meters.shutdown()

    assert data is not None
    points = {
        metric.name: [(dict(p.attributes), p) for p in metric.data.data_points]
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
    }
    task = {"task": "obs.untraced", "queue": "default"}
    assert [p.value for labels, p in points["taskflow_tasks_scheduled_total"]] == [1]
    ((labels, completed),) = points["taskflow_tasks_completed_total"]
    assert labels == {**task, "status": "succeeded"} and completed.value == 1
    ((labels, latency),) = points["taskflow_task_latency_seconds"]
    assert labels == task and latency.count == 1


def test_a_body_in_a_child_process_runs_in_its_attempts_span(
    exporter: InMemorySpanExporter,
) -> None:
    # What the body traced or sent in the child started a trace of its own: the child had
    # no context, the attempt's span stayed in the worker.
    from tests.pool.conftest import APP_PATH
    from tests.pool.poolapp import declare

    with App("obs-pool") as app:
        tasks = declare(app)
        with app.worker(concurrency=1, pool="processes", app_path=APP_PATH):
            trace_id, span_id = tasks["trace_parent"].delay().get(timeout=30)
    (process,) = _kind(exporter.get_finished_spans(), SpanKind.CONSUMER)
    assert trace_id == format(process.context.trace_id, "032x")
    assert span_id == format(process.context.span_id, "016x")
