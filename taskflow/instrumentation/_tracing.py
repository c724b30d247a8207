"""The spans: ``send`` (PRODUCER) around a publish, ``process`` (CONSUMER) per attempt.

A publish of several messages is one ``send`` span (CLIENT) of the batch, with a ``create``
span (PRODUCER) per message as its children. Sends made while the worker runs a finished
task's continuations (:data:`taskflow.kernel.enqueue.continuing`) outside any span are
children of that task's last ``process`` span, so a canvas is one trace.

Attributes follow the OpenTelemetry messaging conventions (``messaging.*``) plus
``taskflow.task.*``; they name the task, its queue, id, attempt and outcome, never a value of
its arguments or its result. The producer's context travels in the envelope's ``headers``
as W3C ``traceparent`` (and ``tracestate``), written by the global propagator.
"""

from __future__ import annotations

import asyncio
import re
from contextvars import ContextVar, Token
from typing import Any

from opentelemetry import context, propagate, trace
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.context import Context
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.propagators.textmap import TextMapPropagator
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    NoOpTracer,
    Span,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    Tracer,
)
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from ..context import TaskContext
from ..errors import Reject, Retry, TaskCancelled, TaskTimeout
from ..kernel.enqueue import Plan, continuing
from ..message import Envelope, error_info
from ..middleware import ExecuteNext
from ._metrics import Metrics

__all__ = ["SYSTEM", "Consumer", "Extractor", "Producer", "outcome_of"]

SYSTEM = "taskflow"

# Raised into a task body when it is cancelled; not imported (the worker's own type).
_CANCELLED_NAMES = frozenset({"Interrupted", "CancelledError"})


def outcome_of(exc: BaseException) -> str:
    """The ``taskflow.task.outcome`` of an attempt that raised ``exc``."""
    if isinstance(exc, Retry):
        return "retried"
    if isinstance(exc, Reject):
        return "rejected"
    if isinstance(exc, TaskTimeout):
        return "timeout"
    if isinstance(exc, TaskCancelled | asyncio.CancelledError):
        return "cancelled"
    if type(exc).__name__ in _CANCELLED_NAMES:
        return "cancelled"
    return "failed"


class _Names:
    """What every span of one (operation, queue, task) shares: its name and the attributes
    that do not change, built once and copied into each span's attributes."""

    __slots__ = ("attributes", "name")

    def __init__(self, operation: str, queue: str, task: str) -> None:
        self.name = f"{operation} {queue}"
        self.attributes: dict[str, Any] = {
            "messaging.system": SYSTEM,
            "messaging.operation.type": operation,
            "messaging.operation.name": operation,
            "messaging.destination.name": queue,
            "taskflow.task.name": task,
        }


class _NameCache:
    """:class:`_Names` by (queue, task), for one operation. Unbounded by design: one entry
    per task and queue the process uses."""

    def __init__(self, operation: str) -> None:
        self.operation = operation
        self._names: dict[tuple[str, str], _Names] = {}

    def get(self, queue: str, task: str) -> _Names:
        names = self._names.get((queue, task))
        if names is None:
            names = self._names.setdefault((queue, task), _Names(self.operation, queue, task))
        return names


_TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_INVALID_TRACE, _INVALID_SPAN = "0" * 32, "0" * 16
_W3C_FIELDS = frozenset({"traceparent", "tracestate", "baggage"})


class Extractor:
    """The sender's context from a message's headers, through the global propagator.

    When that propagator is OpenTelemetry's default (W3C trace context and baggage) and the
    headers carry a version-00 ``traceparent`` and neither ``tracestate`` nor ``baggage``,
    the header is read here (the same result, without the propagator's generic path);
    anything else goes to the propagator.
    """

    def __init__(self) -> None:
        self._checked: TextMapPropagator | None = None
        self._default = False

    def _is_default(self) -> bool:
        textmap = propagate.get_global_textmap()
        if textmap is not self._checked:
            self._checked = textmap
            inner = getattr(textmap, "_propagators", None)
            self._default = (
                isinstance(textmap, CompositePropagator)
                and textmap.fields == _W3C_FIELDS
                and isinstance(inner, list)
                and [type(p) for p in inner]
                == [TraceContextTextMapPropagator, W3CBaggagePropagator]
            )
        return self._default

    def extract(self, headers: dict[str, str]) -> Context:
        """The context to parent a span to (empty when the headers carry none)."""
        if not self._is_default() or "baggage" in headers or "tracestate" in headers:
            return propagate.extract(headers)
        header = headers.get("traceparent")
        if header is None:
            return _EMPTY
        match = _TRACEPARENT.fullmatch(header)
        if match is None:
            return propagate.extract(headers)
        trace_id, span_id, flags = match.groups()
        if trace_id == _INVALID_TRACE or span_id == _INVALID_SPAN:
            return _EMPTY
        sender = SpanContext(
            int(trace_id, 16),
            int(span_id, 16),
            is_remote=True,
            trace_flags=TraceFlags(int(flags, 16)),
        )
        return trace.set_span_in_context(NonRecordingSpan(sender), _EMPTY)


_EMPTY = Context()


def _fail(span: Span, exc: BaseException) -> None:
    try:
        span.record_exception(exc)
    except Exception:  # its __str__ fails (the SDK calls it): the event, without it
        info = error_info(exc)
        span.add_event(
            "exception",
            {
                "exception.type": info["type"],
                "exception.message": info["message"],
                "exception.stacktrace": info["traceback"],
            },
        )
    span.set_status(Status(StatusCode.ERROR, type(exc).__name__))


# The attempt that ended last in this asyncio task (a job's task in the worker): its id and
# its span. The worker settles the attempt in the same task, so the continuations it runs
# (the next step of a chain, a chord's callback) are sent as children of that span.
_finished: ContextVar[tuple[str, SpanContext] | None] = ContextVar(
    "taskflow_otel_finished", default=None
)


class Producer:
    """Opens the spans of a plan's sends and closes them when it was published (then
    counts the envelopes as scheduled): one ``send`` span (PRODUCER) for a single message;
    for several, one ``send`` span (CLIENT) of the batch with a ``create`` span (PRODUCER)
    per message as its children."""

    def __init__(self, tracer: Tracer, metrics: Metrics, extractor: Extractor) -> None:
        self.tracer = tracer
        self.metrics = metrics
        self.enabled = True
        self._extractor = extractor
        # A no-op tracer (the API's no-op provider, or an SDK that is disabled) makes no
        # span and carries no context: the sends are only counted.
        self._tracing = not isinstance(tracer, NoOpTracer)
        self._send = _NameCache("send")
        self._create = _NameCache("create")
        self._open: dict[int, list[Span]] = {}

    def _parent(self) -> Context | None:
        """The context of the sends: the current one, or -- while the worker runs the
        continuations of a finished task outside any span -- that task's last attempt."""
        if trace.get_current_span().get_span_context().is_valid:
            return None
        env = continuing.get()
        if env is None:
            return None
        finished = _finished.get()
        if finished is not None and finished[0] == env.id:
            return trace.set_span_in_context(NonRecordingSpan(finished[1]), _EMPTY)
        return self._extractor.extract(env.headers)  # not run here: the step's send

    def start(self, plan: Plan) -> None:
        """Open the spans and write their context into the envelopes' headers."""
        if not self.enabled:
            return
        if not self._tracing:
            self._open[id(plan)] = []
            return
        parent = self._parent()
        spans: list[Span] = []
        names = self._send
        if len(plan.envelopes) > 1:
            batch = self._batch(plan.envelopes, parent)
            spans.append(batch)
            parent = trace.set_span_in_context(batch, parent)
            names = self._create
        envelopes: list[Envelope] = []
        for env in plan.envelopes:
            shared = names.get(env.queue, env.task)
            attributes = shared.attributes.copy()
            attributes["messaging.message.id"] = env.id
            attributes["taskflow.task.attempt"] = env.attempt
            span = self.tracer.start_span(
                shared.name, context=parent, kind=SpanKind.PRODUCER, attributes=attributes
            )
            spans.append(span)
            if not span.get_span_context().is_valid:  # no SDK: nothing to carry
                envelopes.append(env)
                continue
            headers = dict(env.headers)
            propagate.inject(headers, context=trace.set_span_in_context(span))
            envelopes.append(env.replace(headers=headers))
        plan.envelopes = envelopes
        self._open[id(plan)] = spans

    def _batch(self, envelopes: list[Envelope], parent: Context | None) -> Span:
        queues = {env.queue for env in envelopes}
        attributes: dict[str, Any] = {
            "messaging.system": SYSTEM,
            "messaging.operation.type": "send",
            "messaging.operation.name": "send",
            "messaging.batch.message_count": len(envelopes),
        }
        name = "send"
        if len(queues) == 1:
            (queue,) = queues
            attributes["messaging.destination.name"] = queue
            name = f"send {queue}"
        return self.tracer.start_span(
            name, context=parent, kind=SpanKind.CLIENT, attributes=attributes
        )

    def finish(self, plan: Plan, error: BaseException | None) -> None:
        """Close the spans of ``plan`` (once), failed when ``error`` is given."""
        spans = self._open.pop(id(plan), None)
        if spans is None:
            return
        if error is None:
            self.metrics.sent(plan)
        for span in reversed(spans):  # the batch span, first in the list, ends last
            if error is not None:
                _fail(span, error)
            span.end()


class Consumer:
    """Wraps an execute chain in a ``process`` span per attempt, parented to the sender,
    and measures the attempt."""

    def __init__(self, tracer: Tracer, metrics: Metrics, extractor: Extractor) -> None:
        self.tracer = tracer
        self.metrics = metrics
        self.enabled = True
        self._extractor = extractor
        self._tracing = not isinstance(tracer, NoOpTracer)
        self._names = _NameCache("process")

    def wrap(self, call: ExecuteNext) -> ExecuteNext:
        """``call`` traced while this consumer is enabled."""

        async def traced(ctx: TaskContext) -> Any:
            if not self.enabled:
                return await call(ctx)
            return await self.process(ctx, call)

        return traced

    async def process(self, ctx: TaskContext, call: ExecuteNext) -> Any:
        """Run one attempt inside its span (the current one while it runs), and measure it.

        The metrics are recorded with a context of their own, so no exemplar is sampled
        per attempt. With a no-op tracer there is no span to make: only the metrics.
        """
        span, token = self._start(ctx) if self._tracing else (None, None)
        measured = self.metrics.start(ctx)
        outcome = "failed"
        try:
            value = await call(ctx)
            outcome = "succeeded"
            return value
        except BaseException as exc:
            outcome = outcome_of(exc)
            if span is not None and outcome in _ERRORS:
                _fail(span, exc)
            raise
        finally:
            if span is not None:
                if token is not None:
                    context.detach(token)
                    _finished.set((ctx.id, span.get_span_context()))
                span.set_attribute("taskflow.task.outcome", outcome)
                span.end()
            self.metrics.finish(measured, outcome)

    def _start(self, ctx: TaskContext) -> tuple[Span, Token[Context] | None]:
        """The attempt's ``process`` span, linked to its sender, and the token that made it
        current (None without an SDK: the span is invalid, there is no context to attach)."""
        shared = self._names.get(ctx.queue, ctx.name)
        parent = self._extractor.extract(ctx.headers)
        sender = trace.get_current_span(parent).get_span_context()
        attributes = shared.attributes.copy()
        attributes["messaging.message.id"] = ctx.id
        attributes["taskflow.task.attempt"] = ctx.attempt
        attributes["taskflow.task.delivery"] = ctx.delivery
        span = self.tracer.start_span(
            shared.name,
            context=parent,
            kind=SpanKind.CONSUMER,
            attributes=attributes,
            links=[Link(sender)] if sender.is_valid else None,
        )
        if not span.get_span_context().is_valid:
            return span, None
        return span, context.attach(trace.set_span_in_context(span, parent))


_ERRORS = frozenset({"failed", "timeout"})
