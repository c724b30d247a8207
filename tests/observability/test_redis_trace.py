"""One trace across processes: a send here, its attempt in a real ``taskflow worker`` process
on Redis, started by ``opentelemetry-instrument`` from the standard ``OTEL_*`` variables."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from taskflow import App
from tests.cli.helpers import ROOT, environment, wait_for

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals"),
]

APPS = Path(__file__).parent / "apps"
SECRET = "s3cr3t-word-93bc"


def _spans(path: Path) -> list[dict[str, Any]]:
    """The spans the console exporter wrote (JSON objects, one after another)."""
    text, decoder, at = path.read_text(), json.JSONDecoder(), 0
    spans: list[dict[str, Any]] = []
    while True:
        while at < len(text) and text[at].isspace():
            at += 1
        if at >= len(text):
            return spans
        span, at = decoder.raw_decode(text, at)
        spans.append(span)


@contextmanager
def _instrumented_worker(
    tmp_path: Path, url: str
) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    script = Path(sys.executable).parent
    out = tmp_path / "spans.json"
    env = environment(
        tmp_path,
        {
            "PYTHONPATH": f"{APPS}:{ROOT}",
            "TASKFLOW_BROKER_URL": url,
            "OTEL_SERVICE_NAME": "taskflow-worker",
            "OTEL_TRACES_EXPORTER": "console",
            "OTEL_METRICS_EXPORTER": "none",
            "OTEL_LOGS_EXPORTER": "none",
            "OTEL_BSP_SCHEDULE_DELAY": "50",
        },
    )
    command = [str(script / "opentelemetry-instrument"), str(script / "taskflow")]
    with open(out, "wb") as stdout, open(tmp_path / "stderr", "wb") as stderr:
        proc = subprocess.Popen(
            [*command, "worker", "-A", "traceapp", "-c", "1"],
            cwd=APPS,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
        )
    try:
        yield proc, out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


def test_an_attempt_in_a_worker_process_continues_the_senders_trace(
    tmp_path: Path, redis_url: str, exporter: InMemorySpanExporter
) -> None:
    with App("obs-client", broker=redis_url, results=redis_url) as client:
        handle = client.send_task("obs.shout", args=[SECRET])
        (send,) = exporter.get_finished_spans()
        with _instrumented_worker(tmp_path, redis_url) as (worker, out):
            assert handle.get(timeout=30) == len(SECRET)
            wait_for(lambda: "process default" in out.read_text(), 30, "the worker's span")
            worker.send_signal(signal.SIGTERM)
            assert worker.wait(30) == 0

    (process,) = [span for span in _spans(out) if span["name"] == "process default"]
    assert process["kind"] == "SpanKind.CONSUMER"
    assert process["context"]["trace_id"] == f"0x{send.context.trace_id:032x}"
    assert process["parent_id"] == f"0x{send.context.span_id:016x}"
    assert process["attributes"]["messaging.message.id"] == handle.id
    assert process["attributes"]["taskflow.task.name"] == "obs.shout"
    assert process["attributes"]["taskflow.task.outcome"] == "succeeded"
    assert process["resource"]["attributes"]["service.name"] == "taskflow-worker"
    assert process["attributes"]["taskflow.task.delivery"] == 1
    assert SECRET not in out.read_text()
