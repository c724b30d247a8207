"""A slow StreamEvents client loses events in its own buffer, counts them, and slows nobody."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from taskflow.grpc import pb
from tests.grpc.helpers import (
    Server,
    enqueue,
    json_args,
    start_server,
    start_worker,
    stop,
    stub,
)

pytestmark = pytest.mark.integration

EVENTS = 300
TEXT = "x" * 4096  # large events fill the slow client's HTTP/2 window quickly


@pytest.fixture
def redis_server(redis_url: str, tmp_path: Path) -> Iterator[Server]:
    running = start_server(redis_url, tmp_path / "grpc.log")
    worker = start_worker(redis_url)
    yield running
    stop(worker)
    stop(running.proc)


def test_a_slow_stream_drops_and_reports_it_while_another_gets_every_event(
    redis_server: Server,
) -> None:
    # The slow client's connection does not grow its flow-control window: once the
    # window is full the server cannot write to it, and its buffer of 5 overflows.
    slow_options = [("grpc.http2.bdp_probe", 0)]
    with stub(redis_server.target, options=slow_options) as slow, stub(redis_server.target) as fast:
        slow_call = slow.StreamEvents(pb.StreamEventsRequest(buffer=5, idle_timeout=3.0))
        fast_call = fast.StreamEvents(pb.StreamEventsRequest(buffer=EVENTS, limit=EVENTS))
        assert dict(slow_call.initial_metadata())["taskflow-subscribed"] == "1"
        assert dict(fast_call.initial_metadata())["taskflow-subscribed"] == "1"
        request = pb.TaskRequest(task="g.echo", args=json_args(json.dumps(TEXT)))
        ids = enqueue(fast, *[request] * EVENTS)

        # The fast client reads everything while the slow one reads nothing at all.
        assert {event.task_id for event in fast_call} == set(ids)
        assert fast_call.trailing_metadata()[0].value == "0"

        received = list(slow_call)  # now read, until the stream ends idle
        dropped = int(dict(slow_call.trailing_metadata())["taskflow-dropped"])
        assert dropped > 0
        assert len(received) + dropped == EVENTS
        assert len({event.task_id for event in received}) == len(received)
        assert received[-1].dropped == dropped
