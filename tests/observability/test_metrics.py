"""The metrics of API.md §12 through the OTel API, read with the SDK's in-memory reader."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from taskflow import App, Retry, TaskContext, TaskStatus
from taskflow.instrumentation._metrics import _BATCH, Metrics

from .conftest import Telemetry

NAMES = {
    "taskflow_tasks_scheduled_total",
    "taskflow_tasks_running",
    "taskflow_tasks_completed_total",
    "taskflow_tasks_failed_total",
    "taskflow_tasks_cancelled_total",
    "taskflow_tasks_retried_total",
    "taskflow_results_dropped_total",
    "taskflow_queue_depth",
    "taskflow_worker_loop_stalls_total",
    "taskflow_task_latency_seconds",
    "taskflow_task_wait_seconds",
}


def _points(reader: InMemoryMetricReader) -> dict[str, list[Any]]:
    data = reader.get_metrics_data()
    assert data is not None
    return {
        metric.name: list(metric.data.data_points)
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
    }


def _value(points: list[Any], **labels: str) -> float:
    matching = [p for p in points if dict(p.attributes) == labels]
    assert len(matching) == 1, (labels, [dict(p.attributes) for p in points])
    return float(matching[0].value)


def test_sends_attempts_and_outcomes_are_counted(telemetry: Telemetry, app: App) -> None:
    @app.task(name="obs.maybe", retries=1, retry_on=(), bind=True)
    def maybe(ctx: TaskContext, fail: bool) -> int:
        if fail:
            raise ValueError("no")
        if ctx.attempt == 1:
            raise Retry(countdown=0)
        return ctx.attempt

    ok = maybe.delay(False)
    maybe.delay(True)
    app.enqueue_many([maybe.s(True)])
    worker = app.worker()
    worker.run_until_idle()

    assert ok.get(timeout=5) == 2
    points = _points(telemetry.metrics)
    assert set(points) == NAMES - {
        "taskflow_tasks_cancelled_total",
        "taskflow_results_dropped_total",
    }
    task = {"task": "obs.maybe", "queue": "default"}
    assert _value(points["taskflow_tasks_scheduled_total"], **task) == 3
    completed = points["taskflow_tasks_completed_total"]
    assert _value(completed, **task, status="succeeded") == 1
    assert _value(completed, **task, status="retried") == 1
    assert _value(completed, **task, status="failed") == 2
    assert _value(points["taskflow_tasks_failed_total"], **task, status="failed") == 2
    assert _value(points["taskflow_tasks_retried_total"], **task, status="retried") == 1
    assert _value(points["taskflow_tasks_running"], **task) == 0
    (latency,) = points["taskflow_task_latency_seconds"]
    assert dict(latency.attributes) == task and latency.count == 4
    (wait,) = points["taskflow_task_wait_seconds"]
    assert wait.count == 4 and wait.min >= 0


def test_a_task_cancelled_while_it_runs_is_counted(telemetry: Telemetry, app: App) -> None:
    @app.task(name="obs.cancels", bind=True)
    async def cancels(ctx: TaskContext) -> None:
        assert await app.kernel.cancel(ctx.id)
        await asyncio.sleep(30)  # until the cancellation reaches the body

    handle = cancels.delay()
    app.worker().run_until_idle()

    assert handle.status is TaskStatus.CANCELLED
    points = _points(telemetry.metrics)
    cancelled = points["taskflow_tasks_cancelled_total"]
    assert _value(cancelled, task="obs.cancels", queue="default", status="cancelled") == 1


def test_queue_depth_is_read_from_the_broker(telemetry: Telemetry, app: App) -> None:
    @app.task(name="obs.later")
    def later() -> None:
        return None

    worker = app.worker(["default", "other"])
    for _ in range(3):
        later.delay()
    later.apply_async(queue="other")

    depth = _points(telemetry.metrics)["taskflow_queue_depth"]

    assert _value(depth, queue="default", state="ready") == 3
    assert _value(depth, queue="other", state="ready") == 1
    worker.run_until_idle()
    depth = _points(telemetry.metrics)["taskflow_queue_depth"]
    assert _value(depth, queue="default", state="ready") == 0


def test_a_stalled_event_loop_is_counted(telemetry: Telemetry, app: App) -> None:
    @app.task(name="obs.blocks")
    async def blocks(seconds: float) -> str:
        time.sleep(seconds)  # a blocking call in an async def body stops the loop
        return "done"

    assert _value(_points(telemetry.metrics)["taskflow_worker_loop_stalls_total"]) == 0
    worker = app.worker(concurrency=1)
    worker.stalls.after, worker.stalls.tick = 0.3, 0.05  # quick enough for a test
    with worker:
        assert blocks.delay(1.0).get(timeout=10) == "done"

    assert _value(_points(telemetry.metrics)["taskflow_worker_loop_stalls_total"]) == 1


def test_results_that_are_not_stored_are_counted_by_reason(telemetry: Telemetry, app: App) -> None:
    @app.task(name="obs.badresult")
    def bad_result() -> int:
        return "not an int"  # type: ignore[return-value]

    @app.task(name="obs.closed", bind=True)
    async def closed(ctx: TaskContext) -> int:
        # The record turns final while the body runs (the cancellation never reaches it).
        await app.kernel.results.update(ctx.id, {"status": "cancelled"}, None)
        return 7

    @app.task(name="obs.unstored", store_result=False)
    def unstored() -> int:
        return "ignored"  # type: ignore[return-value]

    bad = bad_result.delay()
    late = closed.delay()
    unstored.delay()
    app.worker().run_until_idle()

    assert bad.status is TaskStatus.FAILED
    assert late.status is TaskStatus.CANCELLED
    dropped = _points(telemetry.metrics)["taskflow_results_dropped_total"]
    assert len(dropped) == 2  # a task that never stores its result drops nothing
    assert _value(dropped, task="obs.badresult", queue="default", reason="unencodable") == 1
    assert _value(dropped, task="obs.closed", queue="default", reason="record_final") == 1


def test_counts_and_histograms_add_up_exactly_after_a_long_drain(
    telemetry: Telemetry, app: App
) -> None:
    # Several times the attempts the metrics apply in one batch, and a remainder that only
    # the collection applies.
    @app.task(name="obs.many", retries=1, bind=True)
    def many(ctx: TaskContext, n: int) -> int:
        if n % 5 == 0 and ctx.attempt == 1:
            raise Retry(countdown=0)
        return n

    @app.task(name="obs.fails", retries=0)
    def fails(n: int) -> int:
        raise ValueError("no")

    total = 3 * _BATCH + 17
    app.enqueue_many([fails.s(n) if n % 7 == 0 else many.s(n) for n in range(1, total + 1)])
    app.worker(concurrency=4).run_until_idle()

    failed = total // 7
    sent = total - failed
    retried = sum(1 for n in range(1, total + 1) if n % 5 == 0 and n % 7 != 0)
    ran = {"task": "obs.many", "queue": "default"}
    raised = {"task": "obs.fails", "queue": "default"}
    for _ in range(2):  # a second collection reports the same totals
        points = _points(telemetry.metrics)
        completed = points["taskflow_tasks_completed_total"]
        assert _value(completed, **ran, status="succeeded") == sent
        assert _value(completed, **ran, status="retried") == retried
        assert _value(completed, **raised, status="failed") == failed
        assert _value(points["taskflow_tasks_failed_total"], **raised, status="failed") == failed
        assert _value(points["taskflow_tasks_retried_total"], **ran, status="retried") == retried
        assert _value(points["taskflow_tasks_scheduled_total"], **ran) == sent
        assert _value(points["taskflow_tasks_scheduled_total"], **raised) == failed
        for labels, attempts in ((ran, sent + retried), (raised, failed)):
            assert _value(points["taskflow_tasks_running"], **labels) == 0
            for name in ("taskflow_task_latency_seconds", "taskflow_task_wait_seconds"):
                (histogram,) = [p for p in points[name] if p.attributes == labels]
                assert histogram.count == attempts


def test_attempts_measured_from_several_threads_add_up() -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    measures = Metrics(provider.get_meter("test"))
    threads, each = 4, 5 * _BATCH + 3
    collected: list[int] = []

    def attempts(name: str) -> None:
        ctx = TaskContext(id="t", name=name, queue="q", attempt=1, enqueued_at=time.time())
        for i in range(each):
            measures.finish(measures.start(ctx), "succeeded" if i % 2 else "failed")

    def collections() -> None:
        for _ in range(20):  # concurrent with the attempts: applies what is pending
            collected.append(len(_points(reader)))

    workers = [threading.Thread(target=attempts, args=(f"t{i}",)) for i in range(threads)]
    workers.append(threading.Thread(target=collections))
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()

    points = _points(reader)
    provider.shutdown()
    assert collected
    for i in range(threads):
        labels = {"task": f"t{i}", "queue": "q"}
        completed = points["taskflow_tasks_completed_total"]
        assert _value(completed, **labels, status="succeeded") == each // 2
        assert _value(completed, **labels, status="failed") == each - each // 2
        assert _value(points["taskflow_tasks_running"], **labels) == 0
        (latency,) = [p for p in points["taskflow_task_latency_seconds"] if p.attributes == labels]
        (wait,) = [p for p in points["taskflow_task_wait_seconds"] if p.attributes == labels]
        assert latency.count == wait.count == each


def test_a_running_attempt_is_reported_before_the_batch_is_applied(
    telemetry: Telemetry, app: App
) -> None:
    seen: list[float] = []

    @app.task(name="obs.looks")
    def looks() -> None:
        points = _points(telemetry.metrics)
        seen.append(_value(points["taskflow_tasks_running"], task="obs.looks", queue="default"))

    looks.delay()
    app.worker().run_until_idle()

    assert seen == [1]
    points = _points(telemetry.metrics)
    assert _value(points["taskflow_tasks_running"], task="obs.looks", queue="default") == 0
