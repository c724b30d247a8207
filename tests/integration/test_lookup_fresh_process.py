"""Looking a task up from a process that never sent one (a web handler showing a task's
status): every read connects on first use, on the real Redis and NATS servers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator

import pytest

from taskflow import App
from taskflow.testing import drain
from tests.integration import nats_helpers, redis_helpers

ROOT = redis_helpers.ROOT

# The reading process: a bare App on the URL, no task declared, nothing sent.
READER = """
import json, sys
from taskflow import App
from taskflow.errors import NotFound, ResultTimeout

url, done_id, waiting_id = sys.argv[1:4]
out = {}
app = App("reader", broker=url)
out["status"] = app.result(done_id).status.value
info = app.get_task(done_id)
out["info"] = [info.name, info.status.value, info.attempts]
out["value"] = app.result(done_id).get(timeout=10)
try:
    app.result(waiting_id).get(timeout=0.2)
except ResultTimeout:
    out["waiting"] = "timeout"
app.close()
fresh = App("reader", broker=url)  # a second fresh process state: info() first
out["info_first"] = fresh.result(done_id).info().result
try:
    fresh.get_task("no-such-task")
except NotFound:
    out["unknown"] = "not found"
fresh.close()
print(json.dumps(out))
"""


@pytest.fixture(params=["redis", "nats"])
def url(request: pytest.FixtureRequest) -> Iterator[str]:
    helpers = redis_helpers if request.param == "redis" else nats_helpers
    address, prefix = helpers.shared_url(lease=30)
    yield address
    helpers.drop_prefix(address, prefix)


def test_a_fresh_process_reads_status_info_and_result_of_any_task(url: str) -> None:
    queue = f"q{uuid.uuid4().hex[:8]}"
    with App("writer", broker=url) as app:

        @app.task(name="lookup.add", queue=queue)
        def add(x: int, y: int) -> int:
            return x + y

        done = add.delay(2, 3)
        assert drain(app, [queue]) == 1
        waiting = add.apply_async((1, 1), countdown=3600)

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", READER, url, done.id, waiting.id],
        cwd=ROOT,
        env=env,
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out == {
        "status": "succeeded",
        "info": ["lookup.add", "succeeded", 1],
        "value": 5,
        "waiting": "timeout",
        "info_first": 5,
        "unknown": "not found",
    }
