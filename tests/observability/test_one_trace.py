"""Work that continues other work stays in its trace: canvas steps, retries, batches, and
the runs beat sends. In-memory span exporter, memory broker."""

from __future__ import annotations

from collections.abc import Sequence

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from taskflow import App, FakeClock, Retry, TaskContext, chord, group

START = 1_699_999_200.0


def _named(spans: Sequence[ReadableSpan], kind: SpanKind, task: str) -> list[ReadableSpan]:
    return [s for s in spans if s.kind is kind and _attr(s, "taskflow.task.name") == task]


def _attr(span: ReadableSpan, name: str) -> object:
    return (span.attributes or {}).get(name)


def _parent_id(span: ReadableSpan) -> int | None:
    return None if span.parent is None else span.parent.span_id


def test_a_chain_of_three_steps_is_one_trace(exporter: InMemorySpanExporter, app: App) -> None:
    @app.task(name="obs.step")
    def step(x: int) -> int:
        return x + 1

    result = (step.s(1) | step.s() | step.s()).apply_async()
    app.worker().run_until_idle()

    assert result.get(timeout=5) == 4
    spans = exporter.get_finished_spans()
    processes = _named(spans, SpanKind.CONSUMER, "obs.step")
    sends = _named(spans, SpanKind.PRODUCER, "obs.step")
    assert len(processes) == 3 and len(sends) == 3
    assert len({s.context.trace_id for s in spans}) == 1
    # Each later step is sent from the attempt of the step before it.
    process_ids = {p.context.span_id for p in processes}
    assert sum(_parent_id(s) in process_ids for s in sends) == 2
    for process in processes:
        (sender,) = [s for s in sends if s.context.span_id == _parent_id(process)]
        assert _attr(sender, "messaging.message.id") == _attr(process, "messaging.message.id")


def test_a_chord_is_one_trace_with_its_body_sent_from_a_header_attempt(
    exporter: InMemorySpanExporter, app: App
) -> None:
    @app.task(name="obs.part")
    def part(x: int) -> int:
        return x * 2

    @app.task(name="obs.total")
    def total(values: list[int]) -> int:
        return sum(values)

    result = chord(group(part.s(i) for i in range(3)), total.s()).apply_async()
    app.worker().run_until_idle()

    assert result.get(timeout=5) == 6
    spans = exporter.get_finished_spans()
    assert len({s.context.trace_id for s in spans}) == 1
    parts = _named(spans, SpanKind.CONSUMER, "obs.part")
    (body_send,) = _named(spans, SpanKind.PRODUCER, "obs.total")
    (body,) = _named(spans, SpanKind.CONSUMER, "obs.total")
    assert len(parts) == 3
    assert _parent_id(body_send) in {p.context.span_id for p in parts}
    assert _parent_id(body) == body_send.context.span_id


def test_a_task_retried_twice_is_one_trace(exporter: InMemorySpanExporter, app: App) -> None:
    @app.task(name="obs.again", retries=2, bind=True)
    def again(ctx: TaskContext) -> int:
        if ctx.attempt < 3:
            raise Retry(countdown=0)
        return ctx.attempt

    handle = again.delay()
    app.worker().run_until_idle()

    assert handle.get(timeout=5) == 3
    spans = exporter.get_finished_spans()
    (send,) = _named(spans, SpanKind.PRODUCER, "obs.again")
    processes = _named(spans, SpanKind.CONSUMER, "obs.again")
    assert [(p.attributes or {}).get("taskflow.task.attempt") for p in processes] == [1, 2, 3]
    assert {s.context.trace_id for s in spans} == {send.context.trace_id}
    assert {_parent_id(p) for p in processes} == {send.context.span_id}


def test_a_batch_is_one_send_span_with_a_create_span_per_message(
    exporter: InMemorySpanExporter, app: App
) -> None:
    @app.task(name="obs.item")
    def item(i: int) -> int:
        return i

    handles = app.enqueue_many([item.s(i) for i in range(3)])
    app.worker().run_until_idle()

    spans = exporter.get_finished_spans()
    (batch,) = [s for s in spans if s.kind is SpanKind.CLIENT]
    creates = _named(spans, SpanKind.PRODUCER, "obs.item")
    processes = _named(spans, SpanKind.CONSUMER, "obs.item")
    assert batch.name == "send default"
    assert batch.attributes is not None
    assert batch.attributes["messaging.batch.message_count"] == 3
    assert batch.attributes["messaging.operation.type"] == "send"
    assert [c.name for c in creates] == ["create default"] * 3
    assert {(c.attributes or {}).get("messaging.operation.type") for c in creates} == {"create"}
    assert {(c.attributes or {}).get("messaging.message.id") for c in creates} == {
        h.id for h in handles
    }
    assert {_parent_id(c) for c in creates} == {batch.context.span_id}
    assert {_parent_id(p) for p in processes} == {c.context.span_id for c in creates}
    assert len({s.context.trace_id for s in spans}) == 1


def test_a_single_message_is_one_send_span_without_a_batch(
    exporter: InMemorySpanExporter, app: App
) -> None:
    @app.task(name="obs.single")
    def single() -> None:
        return None

    app.enqueue_many([single.s()])

    (send,) = exporter.get_finished_spans()
    assert send.kind is SpanKind.PRODUCER and send.name == "send default"


def test_a_run_sent_by_beat_has_a_send_span(exporter: InMemorySpanExporter) -> None:
    clock = FakeClock(START)
    with App("beat-traced", clock=clock) as app:

        @app.periodic(every=10, name="obs.every-10s")
        @app.task(name="obs.tick")
        def tick() -> None:
            return None

        beat = app.beat()
        beat.tick()
        clock.advance(10)
        [run] = beat.tick()
        app.worker().run_until_idle()

    spans = exporter.get_finished_spans()
    (send,) = [s for s in spans if s.kind is SpanKind.PRODUCER]
    (process,) = [s for s in spans if s.kind is SpanKind.CONSUMER]
    assert send.name == "send default"
    assert send.attributes is not None
    assert send.attributes["messaging.message.id"] == run.task_id
    assert send.attributes["taskflow.task.name"] == "obs.tick"
    assert _parent_id(process) == send.context.span_id


def test_a_group_sent_outside_any_span_is_one_trace(
    exporter: InMemorySpanExporter, app: App
) -> None:
    @app.task(name="obs.member")
    def member(i: int) -> int:
        return i

    result = group(member.s(i) for i in range(3)).apply_async()
    app.worker().run_until_idle()

    assert result.get(timeout=5) == [0, 1, 2]
    spans = exporter.get_finished_spans()
    assert len(_named(spans, SpanKind.CONSUMER, "obs.member")) == 3
    assert len({s.context.trace_id for s in spans}) == 1
