"""The spans: ``send`` (PRODUCER) around a publish, ``process`` (CONSUMER) per attempt.

Attributes follow the OpenTelemetry messaging conventions (``messaging.*``) plus
``taskflow.task.*``; they name the task, its queue, id, attempt and outcome, never a value of
its arguments or its result. The producer's context travels in the envelope's ``headers``
as W3C ``traceparent`` (and ``tracestate``), written by the global propagator.
"""

from __future__ import annotations

import asyncio
from typing import Any

from opentelemetry import propagate, trace
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode, Tracer

from ..context import TaskContext
from ..errors import Reject, Retry, TaskCancelled, TaskTimeout
from ..kernel.enqueue import Plan
from ..message import Envelope
from ..middleware import ExecuteNext
from ._metrics import Metrics

__all__ = ["SYSTEM", "Consumer", "Producer", "outcome_of"]

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


def _attributes(
    operation: str, queue: str, message_id: str, task: str, attempt: int
) -> dict[str, Any]:
    return {
        "messaging.system": SYSTEM,
        "messaging.operation.type": operation,
        "messaging.operation.name": operation,
        "messaging.destination.name": queue,
        "messaging.message.id": message_id,
        "taskflow.task.name": task,
        "taskflow.task.attempt": attempt,
    }


def _send_attributes(env: Envelope) -> dict[str, Any]:
    return _attributes("send", env.queue, env.id, env.task, env.attempt)


def _process_attributes(ctx: TaskContext) -> dict[str, Any]:
    return {
        **_attributes("process", ctx.queue, ctx.id, ctx.name, ctx.attempt),
        "taskflow.task.delivery": ctx.delivery,
    }


def _fail(span: Span, exc: BaseException) -> None:
    span.record_exception(exc)
    span.set_status(Status(StatusCode.ERROR, type(exc).__name__))


class Producer:
    """Opens a ``send`` span per envelope of a plan and closes them when it was published
    (then counts the envelopes as scheduled)."""

    def __init__(self, tracer: Tracer, metrics: Metrics) -> None:
        self.tracer = tracer
        self.metrics = metrics
        self.enabled = True
        self._open: dict[int, list[Span]] = {}

    def start(self, plan: Plan) -> None:
        """Open the spans and write their context into the envelopes' headers."""
        if not self.enabled:
            return
        spans: list[Span] = []
        envelopes: list[Envelope] = []
        for env in plan.envelopes:
            span = self.tracer.start_span(
                f"send {env.queue}", kind=SpanKind.PRODUCER, attributes=_send_attributes(env)
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

    def finish(self, plan: Plan, error: BaseException | None) -> None:
        """Close the spans of ``plan`` (once), failed when ``error`` is given."""
        spans = self._open.pop(id(plan), None)
        if spans is None:
            return
        if error is None:
            self.metrics.sent(plan)
        for span in spans:
            if error is not None:
                _fail(span, error)
            span.end()


class Consumer:
    """Wraps an execute chain in a ``process`` span per attempt, parented to the sender,
    and measures the attempt."""

    def __init__(self, tracer: Tracer, metrics: Metrics) -> None:
        self.tracer = tracer
        self.metrics = metrics
        self.enabled = True

    def wrap(self, call: ExecuteNext) -> ExecuteNext:
        """``call`` traced while this consumer is enabled."""

        async def traced(ctx: TaskContext) -> Any:
            if not self.enabled:
                return await call(ctx)
            return await self.process(ctx, call)

        return traced

    async def process(self, ctx: TaskContext, call: ExecuteNext) -> Any:
        """Run one attempt inside its span; measure it outside (no exemplar per attempt)."""
        attempt = self.metrics.start(ctx)
        outcome = "failed"
        try:
            value, outcome = await self._traced(ctx, call)
        except BaseException as exc:
            outcome = outcome_of(exc)
            raise
        finally:
            self.metrics.finish(attempt, outcome)
        return value

    async def _traced(self, ctx: TaskContext, call: ExecuteNext) -> tuple[Any, str]:
        parent = propagate.extract(ctx.headers)
        sender = trace.get_current_span(parent).get_span_context()
        links = [Link(sender)] if sender.is_valid else None
        with self.tracer.start_as_current_span(
            f"process {ctx.queue}",
            context=parent,
            kind=SpanKind.CONSUMER,
            links=links,
            attributes=_process_attributes(ctx),
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            try:
                value = await call(ctx)
            except BaseException as exc:
                outcome = outcome_of(exc)
                span.set_attribute("taskflow.task.outcome", outcome)
                if outcome in {"failed", "timeout"}:
                    _fail(span, exc)
                raise
            span.set_attribute("taskflow.task.outcome", "succeeded")
            return value, "succeeded"
