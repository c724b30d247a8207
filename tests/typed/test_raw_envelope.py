"""A producer in "another language": the envelope is built from docs/protocol.md with the
raw protobuf runtime, base64 and plain json -- no taskflow helper -- and a worker runs it."""

from __future__ import annotations

import base64
import json
import time
import uuid

from google.protobuf.struct_pb2 import Struct
from google.protobuf.timestamp_pb2 import Timestamp

from taskflow import App
from tests.typed.helpers import publish_raw, record
from tests.typed.protos.shop import Line, Order, Receipt


def protobuf_arg(message: object) -> dict[str, str]:
    """The documented protobuf form: full type name plus base64 of the serialized bytes."""
    return {
        "__tf__": "protobuf",
        "type": message.DESCRIPTOR.full_name,  # type: ignore[attr-defined]
        "v": base64.b64encode(message.SerializeToString()).decode("ascii"),  # type: ignore[attr-defined]
    }


def test_a_hand_built_json_envelope_with_protobuf_arguments_runs_on_a_worker(app: App) -> None:
    got: list[tuple[object, object, object]] = []

    @app.task(name="shop.ship", retries=2)
    def ship(order: Order, when: Timestamp, meta: Struct, express: bool = False) -> Receipt:
        got.append((order, when, meta))
        return Receipt(order_id=order.id, total_cents=100 if express else 50)

    order = Order(id="o-9", lines=[Line(sku="pot", qty=1)])
    when = Timestamp(seconds=1_700_000_000)
    meta = Struct()
    meta.update({"channel": "web", "gift": True})
    task_id = str(uuid.uuid4())
    envelope = {
        "v": 1,
        "id": task_id,
        "task": "shop.ship",
        "queue": "default",
        "args": [protobuf_arg(order), protobuf_arg(when), protobuf_arg(meta)],
        "kwargs": {"express": True},
        "priority": 5,
        "created_at": time.time(),
        "headers": {"producer": "go-service"},
    }
    publish_raw(app, task_id, json.dumps(envelope).encode("utf-8"))

    assert app.worker().run_until_idle() == 1
    assert got == [(order, when, meta)]
    stored = record(app, task_id)
    assert stored["status"] == "succeeded"
    # The result record is readable without taskflow too: the same tagged protobuf form.
    wire = stored["result"]
    assert wire["type"] == "taskflow.test.shop.Receipt"
    assert Receipt.FromString(base64.b64decode(wire["v"])) == Receipt(
        order_id="o-9", total_cents=100
    )
    assert app.result(task_id).get(timeout=5) == Receipt(order_id="o-9", total_cents=100)
