"""The metrics, through the OpenTelemetry API (names as in API.md §12).

Counters and histograms are labelled ``task`` and ``queue``; the outcome counters also
``status``. The counters are observable instruments over counts kept here. An attempt
appends its start and its end to a queue of pending events, without a lock; every
:data:`_BATCH` events, and before every collection, the events are applied in one go: the
counts updated and the histogram records made (an attempt's two records, with the labels
of its task and queue, which the SDK aggregates the same whenever they are made before
the collection that reports them).
``taskflow_results_dropped_total`` counts results the worker could not store, by ``task``,
``queue`` and ``reason``. ``taskflow_queue_depth`` is an observable gauge read from the
broker of every live worker in the process (``broker.depth``), labelled ``queue`` and
``state`` (``ready``, ``scheduled``, ``inflight``, ``dead``), when the metric reader collects.
``taskflow_worker_loop_stalls_total`` counts the stalls of the workers' event loops in the
process (each one a warning of :mod:`taskflow.worker.stalls`).
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from opentelemetry.context import Context
from opentelemetry.metrics import CallbackOptions, Meter, Observation

from ..brokers.base import BrokerAdmin
from ..context import TaskContext
from ..kernel import Kernel
from ..kernel.enqueue import Plan

__all__ = ["DEPTH_TIMEOUT", "Attempt", "Metrics"]

log = logging.getLogger("taskflow.instrumentation")

DEPTH_TIMEOUT = 2.0
"""Seconds one broker gets to report the depth of a queue at a collection."""

# The counter an outcome adds to, besides ``taskflow_tasks_completed_total``.
_OUTCOME_COUNTER = {
    "failed": "taskflow_tasks_failed_total",
    "timeout": "taskflow_tasks_failed_total",
    "cancelled": "taskflow_tasks_cancelled_total",
    "retried": "taskflow_tasks_retried_total",
}
_TASK = ("task", "queue")
_OUTCOME = ("task", "queue", "status")
_DROPPED = ("task", "queue", "reason")

# The context of the histogram records: explicit, so the SDK neither reads the current one
# nor samples an exemplar per attempt.
_NO_CONTEXT = Context()

_BATCH = 128
"""Pending attempt events (a start or an end each) after which the attempt that adds the
last one applies them all."""

# A start: ((task, queue), seconds waited or None); an end: ((task, queue), seconds run,
# outcome). Only strings and numbers, so the garbage collector stops tracking the events
# that wait for their batch instead of carrying them into its older generations.
_Event = tuple[tuple[str, str], float | None] | tuple[tuple[str, str], float, str]


class Attempt:
    """One attempt being measured: its labels and when it started."""

    __slots__ = ("key", "labels", "started")

    def __init__(self, key: tuple[str, str], labels: dict[str, str]) -> None:
        self.key = key
        self.labels = labels
        self.started = time.perf_counter()


# The counts kept here and reported by observable instruments when the reader collects:
# a batch of attempts updates dictionaries under one lock instead of making SDK measurements.
# name -> (label names, description, monotonic)
_COUNTS: dict[str, tuple[tuple[str, ...], str, bool]] = {
    "taskflow_tasks_scheduled_total": (_TASK, "Tasks sent to the broker.", True),
    "taskflow_tasks_running": (_TASK, "Attempts running now.", False),
    "taskflow_tasks_completed_total": (_OUTCOME, "Attempts that ended, by status.", True),
    "taskflow_tasks_failed_total": (_OUTCOME, "Attempts that failed or timed out.", True),
    "taskflow_tasks_cancelled_total": (_OUTCOME, "Attempts cancelled while running.", True),
    "taskflow_tasks_retried_total": (_OUTCOME, "Attempts that asked for a retry.", True),
    "taskflow_results_dropped_total": (_DROPPED, "Results that were not stored.", True),
    "taskflow_worker_loop_stalls_total": (
        (),
        "Times a worker's event loop stopped turning long enough to warn.",
        True,
    ),
}


class Metrics:
    """The instruments, and the workers whose queues the depth gauge reports."""

    def __init__(self, meter: Meter) -> None:
        self.enabled = True
        self._watched: list[tuple[weakref.ref[Any], Kernel, tuple[str, ...]]] = []
        self._lock = threading.Lock()
        self._counts: dict[str, dict[tuple[str, ...], int]] = {name: {} for name in _COUNTS}
        self._running = self._counts["taskflow_tasks_running"]
        self._counts["taskflow_worker_loop_stalls_total"][()] = 0  # reported from the start
        self._completed = self._counts["taskflow_tasks_completed_total"]
        # The attempts' starts and ends not applied yet (appended and taken without a lock).
        self._pending: deque[_Event] = deque()
        # The histograms' label sets, one dictionary per (task, queue), built once.
        self._labels: dict[tuple[str, str], dict[str, str]] = {}
        for name, (labels, description, monotonic) in _COUNTS.items():
            create = (
                meter.create_observable_counter
                if monotonic
                else meter.create_observable_up_down_counter
            )
            create(name, [self._observer(name, labels)], "{task}", description)
        self.latency = meter.create_histogram(
            "taskflow_task_latency_seconds", "s", "Run time of an attempt."
        )
        self.wait = meter.create_histogram(
            "taskflow_task_wait_seconds", "s", "Time from the send to the start of an attempt."
        )
        meter.create_observable_gauge(
            "taskflow_queue_depth",
            [self.observe_depth],
            "{message}",
            "Messages in a queue, by state, as the broker counts them.",
        )

    def _add(self, name: str, key: tuple[str, ...], n: int = 1) -> None:
        counts = self._counts[name]
        with self._lock:
            counts[key] = counts.get(key, 0) + n

    def _observer(
        self, name: str, labels: tuple[str, ...]
    ) -> Callable[[CallbackOptions], Iterable[Observation]]:
        counts = self._counts[name]

        def observe(options: CallbackOptions) -> Iterable[Observation]:
            self.flush()
            with self._lock:
                items = list(counts.items())
            return [Observation(n, dict(zip(labels, key, strict=True))) for key, n in items]

        return observe

    def sent(self, plan: Plan) -> None:
        """Count the envelopes of a plan that was published."""
        if not self.enabled:
            return
        counts = self._counts["taskflow_tasks_scheduled_total"]
        with self._lock:
            for env in plan.envelopes:
                key = (env.task, env.queue)
                counts[key] = counts.get(key, 0) + 1

    def labels(self, key: tuple[str, str]) -> dict[str, str]:
        """The labels ``task`` and ``queue`` of ``key``, the same dictionary every time."""
        labels = self._labels.get(key)
        if labels is None:
            labels = self._labels.setdefault(key, {"task": key[0], "queue": key[1]})
        return labels

    def start(self, ctx: TaskContext) -> Attempt:
        """An attempt starts: it is running, and it waited since its send."""
        key = (ctx.name, ctx.queue)
        labels = self._labels.get(key) or self.labels(key)
        waited = max(0.0, time.time() - ctx.enqueued_at) if ctx.enqueued_at > 0 else None
        self._pending.append((key, waited))
        return Attempt(key, labels)

    def finish(self, attempt: Attempt, outcome: str) -> None:
        """An attempt ended with ``outcome``."""
        took = time.perf_counter() - attempt.started
        pending = self._pending
        pending.append((attempt.key, took, outcome))
        if len(pending) >= _BATCH:
            self.flush()

    def flush(self) -> None:
        """Apply the attempts' pending starts and ends: count them, and record their waits
        and run times in the histograms. Called every :data:`_BATCH` events and before
        every collection, from any thread."""
        pending = self._pending
        if not pending:
            return
        running, completed, counts = self._running, self._completed, self._counts
        record_wait, record_latency = self.wait.record, self.latency.record
        labels = self._labels
        with self._lock:
            while pending:
                event = pending.popleft()
                if len(event) == 2:  # a start: (key, waited)
                    key, waited = event
                    running[key] = running.get(key, 0) + 1
                    if waited is not None:
                        record_wait(waited, labels[key], _NO_CONTEXT)
                    continue
                key, took, outcome = event  # an end
                record_latency(took, labels[key], _NO_CONTEXT)
                running[key] -= 1
                outcome_key = (*key, outcome)
                completed[outcome_key] = completed.get(outcome_key, 0) + 1
                counter = _OUTCOME_COUNTER.get(outcome)
                if counter is not None:
                    also = counts[counter]
                    also[outcome_key] = also.get(outcome_key, 0) + 1

    def dropped(self, task: str, queue: str, reason: str) -> None:
        """A result of ``task`` was not stored, for ``reason``."""
        if self.enabled:
            self._add("taskflow_results_dropped_total", (task, queue, reason))

    def stalled(self) -> None:
        """A worker's event loop stopped turning (:mod:`taskflow.worker.stalls`)."""
        if self.enabled:
            self._add("taskflow_worker_loop_stalls_total", ())

    def watch(self, worker: Any, kernel: Kernel, queues: Sequence[str]) -> None:
        """Report the depth of ``queues`` while ``worker`` lives."""
        self._watched = [w for w in self._watched if w[0]() is not None]
        self._watched.append((weakref.ref(worker), kernel, tuple(queues)))

    def observe_depth(self, options: CallbackOptions) -> Iterable[Observation]:
        """The gauge's callback: each watched queue's counts, once per broker."""
        if not self.enabled:
            return []
        seen: set[tuple[str, str]] = set()
        observations: list[Observation] = []
        for ref, kernel, queues in self._watched:
            if ref() is None or not kernel.connected or kernel.loop.in_loop_thread():
                continue
            for queue in queues:
                if (kernel.broker.url, queue) in seen:
                    continue
                seen.add((kernel.broker.url, queue))
                observations += _depth(kernel, queue)
        return observations


def _depth(kernel: Kernel, queue: str) -> list[Observation]:
    broker = kernel.broker
    if not isinstance(broker, BrokerAdmin):
        return []
    try:
        counts = kernel.call(broker.depth(queue), timeout=DEPTH_TIMEOUT)
    except Exception as exc:
        log.debug("could not read the depth of queue %s: %s", queue, exc)
        return []
    return [Observation(n, {"queue": queue, "state": state}) for state, n in counts.items()]
