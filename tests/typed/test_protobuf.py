"""Protobuf parameters and results: round trips through a worker, strict decoding."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from taskflow import App, PayloadError
from taskflow.payload import decode_any
from taskflow.task import Task
from tests.typed.helpers import assert_dead_lettered_with_payload_error, publish_raw, record
from tests.typed.protos.shop import Line, Order, Receipt, Refund

PLACE = "shop.place"


def register_place(app: App, calls: list[object]) -> Task[..., Any]:
    @app.task(name=PLACE)
    def place(order: Order, discount_cents: int = 0) -> Receipt:
        calls.append(order)
        total = sum(line.qty * 250 for line in order.lines) - discount_cents
        return Receipt(order_id=order.id, total_cents=total)

    return place


def an_order() -> object:
    order = Order(id="o-1", lines=[Line(sku="tea", qty=2), Line(sku="cup", qty=1)])
    order.placed_at.FromSeconds(1_700_000_000)
    return order


def raw_envelope(task_id: str, args: list[object]) -> bytes:
    return json.dumps(
        {"v": 1, "id": task_id, "task": PLACE, "queue": "default", "args": args}
    ).encode()


def test_a_protobuf_parameter_arrives_as_its_class_and_the_result_comes_back_as_its_class(
    app: App,
) -> None:
    calls: list[object] = []
    place = register_place(app, calls)
    result = place.delay(an_order(), discount_cents=50)
    assert app.worker().run_until_idle() == 1
    assert type(calls[0]) is Order and calls[0] == an_order()
    receipt = result.get(timeout=5)
    assert type(receipt) is Receipt
    assert receipt == Receipt(order_id="o-1", total_cents=700)


def test_the_stored_result_is_the_tagged_protobuf_wire_form(app: App) -> None:
    place = register_place(app, [])
    result = place.delay(an_order())
    app.worker().run_until_idle()
    wire = record(app, result.id)["result"]
    assert wire["__tf__"] == "protobuf" and wire["type"] == "taskflow.test.shop.Receipt"
    assert Receipt.FromString(base64.b64decode(wire["v"])).total_cents == 750


def test_bytes_of_another_message_type_under_the_right_type_name_are_dead_lettered(
    app: App,
) -> None:
    calls: list[object] = []
    register_place(app, calls)
    foreign = Refund(order_id="o-1", reason="broken", full=True).SerializeToString()
    wrong = {
        "__tf__": "protobuf",
        "type": "taskflow.test.shop.Order",
        "v": base64.b64encode(foreign).decode(),
    }
    publish_raw(app, "wrong-bytes", raw_envelope("wrong-bytes", [wrong]))
    assert app.worker().run_until_idle() == 1
    message = assert_dead_lettered_with_payload_error(app, "wrong-bytes")
    assert "taskflow.test.shop.Order" in message
    assert calls == []


def test_a_message_declared_as_another_type_is_dead_lettered(app: App) -> None:
    calls: list[object] = []
    register_place(app, calls)
    refund = Refund(order_id="o-1").SerializeToString()
    other = {
        "__tf__": "protobuf",
        "type": "taskflow.test.shop.Refund",
        "v": base64.b64encode(refund).decode(),
    }
    publish_raw(app, "other-type", raw_envelope("other-type", [other]))
    app.worker().run_until_idle()
    message = assert_dead_lettered_with_payload_error(app, "other-type")
    assert "expected taskflow.test.shop.Order, got taskflow.test.shop.Refund" in message
    assert calls == []


def test_bytes_that_are_not_protobuf_at_all_are_dead_lettered(app: App) -> None:
    register_place(app, [])
    junk = {
        "__tf__": "protobuf",
        "type": "taskflow.test.shop.Order",
        "v": base64.b64encode(b"\xff\xff\xff").decode(),
    }
    publish_raw(app, "junk", raw_envelope("junk", [junk]))
    app.worker().run_until_idle()
    assert_dead_lettered_with_payload_error(app, "junk")


def test_a_producer_without_protobuf_may_send_the_proto3_json_mapping(app: App) -> None:
    calls: list[object] = []
    register_place(app, calls)
    as_json = {
        "id": "o-1",
        "lines": [{"sku": "tea", "qty": 2}, {"sku": "cup", "qty": 1}],
        "placedAt": "2023-11-14T22:13:20Z",
    }
    publish_raw(app, "json-form", raw_envelope("json-form", [as_json]))
    app.worker().run_until_idle()
    assert calls == [an_order()]
    assert app.result("json-form").get(timeout=5) == Receipt(order_id="o-1", total_cents=750)


def test_a_json_mapping_with_an_unknown_field_is_dead_lettered(app: App) -> None:
    register_place(app, [])
    publish_raw(app, "bad-json", raw_envelope("bad-json", [{"id": "o-1", "colour": "red"}]))
    app.worker().run_until_idle()
    message = assert_dead_lettered_with_payload_error(app, "bad-json")
    assert "unknown field" in message and "red" not in message


def test_sending_the_wrong_message_class_fails_at_enqueue_and_enqueues_nothing(app: App) -> None:
    place = register_place(app, [])
    with pytest.raises(PayloadError, match=r"shop\.place\(order\).*taskflow\.test\.shop\.Order"):
        place.delay(Refund(order_id="o-1"))
    assert app.worker().run_until_idle() == 0


def test_an_un_annotated_protobuf_value_decodes_by_its_registered_type_name() -> None:
    wire = {
        "__tf__": "protobuf",
        "type": "taskflow.test.shop.Line",
        "v": base64.b64encode(Line(sku="a", qty=1).SerializeToString()).decode(),
    }
    assert decode_any(wire) == Line(sku="a", qty=1)
