"""WorkerService against a real server process and real worker processes (Redis, NATS)."""

from __future__ import annotations

import json

import grpc
import pytest
from google.protobuf.any_pb2 import Any
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from taskflow.grpc import pb
from tests.grpc.helpers import Server, add, enqueue, error_of, json_args, stub

pytestmark = pytest.mark.integration


def _packed(message: Timestamp | Duration) -> pb.Argument:
    packed = Any()
    packed.Pack(message)
    return pb.Argument(message=packed)


def _open_stream(client, **request):  # type: ignore[no-untyped-def]
    """A StreamEvents call whose subscription is in place (its headers arrived)."""
    call = client.StreamEvents(pb.StreamEventsRequest(**request))
    assert dict(call.initial_metadata())["taskflow-subscribed"] == "1"
    return call


def test_sent_tasks_run_on_a_worker_and_their_events_stream_back(
    server: Server, worker: None
) -> None:
    with stub(server.target) as client:
        events = _open_stream(client, limit=3)
        ids = enqueue(
            client,
            add(2, 3),
            pb.TaskRequest(task="g.seconds", args=[_packed(Timestamp(seconds=42))]),
            pb.TaskRequest(task="g.headers", metadata={"tenant": "acme"}, correlation_id="c-1"),
        )
        received = {event.task_id: event for event in events}
        assert events.code() == grpc.StatusCode.OK
        assert set(received) == set(ids)
        results = [json.loads(received[task_id].result_json) for task_id in ids]
        assert results == [5, 42, {"tenant": "acme"}]
        assert {event.status for event in received.values()} == {"succeeded"}
        assert dict(events.trailing_metadata())["taskflow-dropped"] == "0"
        record = client.GetTask(pb.GetTaskRequest(id=ids[0]))
        assert (record.task, record.status, record.attempts) == ("g.add", "succeeded", 1)
        assert record.finished_at.seconds > 0


def test_status_codes_of_enqueue(server: Server) -> None:
    with stub(server.target) as client:
        unknown = error_of(lambda: enqueue(client, pb.TaskRequest(task="g.nope")))
        assert unknown.code() == grpc.StatusCode.NOT_FOUND
        assert "g.nope" in unknown.details()

        wrong = error_of(lambda: enqueue(client, add(1, 2, kwargs={"y": json_args("2")[0]})))
        assert wrong.code() == grpc.StatusCode.INVALID_ARGUMENT

        text = pb.TaskRequest(task="g.add", args=json_args('"one"', "2"))
        bad_value = error_of(lambda: enqueue(client, text))
        assert bad_value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "g.add(x)" in bad_value.details()

        broken = pb.TaskRequest(task="g.add", args=json_args("{", "2"))
        assert error_of(lambda: enqueue(client, broken)).code() == grpc.StatusCode.INVALID_ARGUMENT

        other_type = pb.TaskRequest(task="g.seconds", args=[_packed(Duration(seconds=1))])
        mismatch = error_of(lambda: enqueue(client, other_type))
        assert mismatch.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "g.seconds(at)" in mismatch.details()
        assert "google.protobuf.Timestamp" in mismatch.details()

        priority = error_of(lambda: enqueue(client, add(1, 2, priority=12)))
        assert priority.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "priority" in priority.details()

        not_proto = pb.TaskRequest(task="g.add", args=[_packed(Timestamp()), json_args("1")[0]])
        assert error_of(lambda: enqueue(client, not_proto)).code() == (
            grpc.StatusCode.INVALID_ARGUMENT
        )


def test_a_stream_may_not_ask_for_more_than_the_servers_maximum_buffer(server: Server) -> None:
    with stub(server.target) as client:
        call = client.StreamEvents(pb.StreamEventsRequest(buffer=1_000_000))
        refused = error_of(lambda: list(call))
        assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "buffer" in refused.details()


def test_a_batch_with_one_bad_task_enqueues_nothing(server: Server) -> None:
    with stub(server.target) as client:
        good = add(1, 1, idempotency_key="batch-good")
        bad = pb.TaskRequest(task="g.add", args=json_args('"x"', "1"))
        assert error_of(lambda: enqueue(client, good, bad)).code() == (
            grpc.StatusCode.INVALID_ARGUMENT
        )
        # Had the good task gone out, its key would now conflict with other arguments.
        assert len(enqueue(client, add(5, 5, idempotency_key="batch-good"))) == 1


def test_an_idempotency_key_returns_the_first_id_or_conflicts(server: Server) -> None:
    with stub(server.target) as client:
        first = enqueue(client, add(1, 2, idempotency_key="k-1"))
        assert enqueue(client, add(1, 2, idempotency_key="k-1")) == first
        conflict = error_of(lambda: enqueue(client, add(1, 3, idempotency_key="k-1")))
        assert conflict.code() == grpc.StatusCode.ALREADY_EXISTS
        assert "k-1" in conflict.details()


def test_get_and_cancel(server: Server) -> None:
    with stub(server.target) as client:
        missing = error_of(lambda: client.GetTask(pb.GetTaskRequest(id="no-such-task")))
        assert missing.code() == grpc.StatusCode.NOT_FOUND
        gone = error_of(lambda: client.CancelTask(pb.CancelTaskRequest(id="no-such-task")))
        assert gone.code() == grpc.StatusCode.NOT_FOUND

        (task_id,) = enqueue(client, add(1, 1, countdown=600.0, priority=3, queue="later"))
        waiting = client.GetTask(pb.GetTaskRequest(id=task_id))
        assert (waiting.state, waiting.queue, waiting.priority) == ("scheduled", "later", 3)
        assert client.CancelTask(pb.CancelTaskRequest(id=task_id)).cancelled
        assert client.GetTask(pb.GetTaskRequest(id=task_id)).status == "cancelled"


def test_two_streams_each_receive_every_event(server: Server, worker: None) -> None:
    with stub(server.target) as one, stub(server.target) as two:
        first = _open_stream(one, limit=20)
        second = _open_stream(two, limit=20, tasks=["g.add"])
        ids = enqueue(one, *[add(i, i) for i in range(20)])
        assert {event.task_id for event in first} == set(ids)
        assert {event.task_id for event in second} == set(ids)


def test_streams_select_by_task_queue_and_id(server: Server, worker: None) -> None:
    with stub(server.target) as client:
        by_queue = _open_stream(client, queues=["q2"], limit=2)
        by_task = _open_stream(client, tasks=["g.echo"], limit=1)
        ids = enqueue(
            client,
            add(1, 1, queue="q2"),
            pb.TaskRequest(task="g.echo", args=json_args('"hi"')),
            add(2, 2, queue="q2"),
        )
        assert {e.task_id for e in by_queue} == {ids[0], ids[2]}
        assert [e.result_json for e in by_task] == ['"hi"']
        # Held a second by the broker: the stream that names its id opens before it runs.
        (later,) = enqueue(client, add(3, 3, countdown=1.0))
        by_id = _open_stream(client, ids=[later], limit=1)
        enqueue(client, add(4, 4))
        assert [(e.task_id, e.result_json) for e in by_id] == [(later, "6")]
