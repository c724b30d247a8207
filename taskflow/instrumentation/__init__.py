"""OpenTelemetry instrumentation of taskflow (extra ``taskflow-queue[otel]``).

::

    from taskflow.instrumentation import TaskflowInstrumentor
    TaskflowInstrumentor().instrument(tracer_provider=tp, meter_provider=mp)   # or the global ones

It is registered under the ``opentelemetry_instrumentor`` entry point, so
``opentelemetry-instrument taskflow worker -A app`` instruments a worker from the standard
``OTEL_*`` environment variables. Instrument before the worker starts: a worker builds its
execute chain when it starts consuming. ``instrument()`` and ``uninstrument()`` may be called
any number of times; after ``uninstrument()`` the wrappers pass straight through.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from importlib.metadata import version
from typing import Any

from opentelemetry import metrics, trace
from opentelemetry.instrumentation.instrumentor import (  # type: ignore[attr-defined]
    BaseInstrumentor,
)

from ..kernel.enqueue import Enqueuer, Plan
from ..message import Envelope
from ..middleware import ExecuteNext, MiddlewareStack
from ..worker import Worker
from ..worker.settle import Settler
from ..worker.stalls import StallWatch
from ._metrics import Metrics
from ._tracing import Consumer, Extractor, Producer

__all__ = ["TaskflowInstrumentor"]

_SCHEMA_URL = "https://opentelemetry.io/schemas/1.27.0"


class TaskflowInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """Traces every send and every attempt of every taskflow app in the process."""

    _originals: dict[tuple[type, str], Callable[..., Any]] = {}
    _producer: Producer | None = None
    _consumer: Consumer | None = None
    _metrics: Metrics | None = None

    def instrumentation_dependencies(self) -> Collection[str]:
        """The distributions this instruments: taskflow itself."""
        return ("taskflow-queue >= 0.1",)

    def _instrument(self, **kwargs: Any) -> None:
        tracer = trace.get_tracer(
            __name__,
            version("taskflow-queue"),
            kwargs.get("tracer_provider"),
            schema_url=_SCHEMA_URL,
        )
        meter = metrics.get_meter(
            __name__, version("taskflow-queue"), kwargs.get("meter_provider"), _SCHEMA_URL
        )
        measures = Metrics(meter)
        extractor = Extractor()
        producer = Producer(tracer, measures, extractor)
        consumer = Consumer(tracer, measures, extractor)
        self._producer, self._consumer, self._metrics = producer, consumer, measures
        self._patch(Worker, "__init__", _watched(Worker.__init__, measures))
        self._patch(Settler, "result_dropped", _dropped(Settler.result_dropped, measures))
        self._patch(StallWatch, "stalled", _stalled(StallWatch.stalled, measures))
        self._patch(Enqueuer, "plan", _planned(Enqueuer.plan, producer))
        self._patch(Enqueuer, "run", _ran(Enqueuer.run, producer))
        self._patch(Enqueuer, "run_blocking", _ran_blocking(Enqueuer.run_blocking, producer))
        self._patch(
            MiddlewareStack, "wrap_execute", _wrapped(MiddlewareStack.wrap_execute, consumer)
        )

    def _uninstrument(self, **kwargs: Any) -> None:
        for (owner, name), original in self._originals.items():
            setattr(owner, name, original)
        self._originals.clear()
        for part in (self._producer, self._consumer, self._metrics):
            if part is not None:
                part.enabled = False
        self._producer = self._consumer = self._metrics = None

    def _patch(self, owner: type, name: str, replacement: Callable[..., Any]) -> None:
        self._originals.setdefault((owner, name), getattr(owner, name))
        setattr(owner, name, replacement)


def _planned(original: Callable[[Enqueuer, list[Any]], Plan], producer: Producer) -> Any:
    def plan(self: Enqueuer, prepared: list[Any]) -> Plan:
        made = original(self, prepared)
        producer.start(made)
        return made

    return plan


def _ran(original: Callable[..., Any], producer: Producer) -> Any:
    async def run(self: Enqueuer, plan: Plan) -> list[str]:
        try:
            ids: list[str] = await original(self, plan)
        except BaseException as exc:
            producer.finish(plan, exc)
            raise
        producer.finish(plan, None)
        return ids

    return run


def _ran_blocking(original: Callable[..., list[str]], producer: Producer) -> Any:
    def run_blocking(self: Enqueuer, plan: Plan) -> list[str]:
        try:
            ids = original(self, plan)
        except BaseException as exc:
            producer.finish(plan, exc)
            raise
        producer.finish(plan, None)
        return ids

    return run_blocking


def _wrapped(
    original: Callable[[MiddlewareStack, ExecuteNext], ExecuteNext], consumer: Consumer
) -> Any:
    def wrap_execute(self: MiddlewareStack, last: ExecuteNext) -> ExecuteNext:
        return consumer.wrap(original(self, last))

    return wrap_execute


def _dropped(original: Callable[[Settler, Envelope, str], None], measures: Metrics) -> Any:
    def result_dropped(self: Settler, env: Envelope, reason: str) -> None:
        original(self, env, reason)
        measures.dropped(env.task, env.queue, reason)

    return result_dropped


def _stalled(original: Callable[[StallWatch, float], None], measures: Metrics) -> Any:
    def stalled(self: StallWatch, seconds: float) -> None:
        original(self, seconds)
        measures.stalled()

    return stalled


def _watched(original: Callable[..., None], measures: Metrics) -> Any:
    def __init__(self: Worker, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        measures.watch(self, self.kernel, self.queues)

    return __init__
