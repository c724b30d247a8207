"""Typed round trips on every registered backend (memory, and each real one that registers)."""

from __future__ import annotations

import base64
import dataclasses
import json
from datetime import date
from decimal import Decimal

from pydantic import BaseModel

from taskflow import App
from tests.typed.helpers import assert_dead_lettered_with_payload_error, publish_raw
from tests.typed.protos.shop import Line, Order, Receipt, Refund


class Quote(BaseModel):
    sku: str
    price: Decimal


@dataclasses.dataclass
class Stock:
    sku: str
    day: date
    counts: dict[int, int]


def test_protobuf_pydantic_and_msgpack_tasks_round_trip(backend_app: App) -> None:
    app = backend_app

    @app.task(name="t.receipt")
    def receipt(order: Order) -> Receipt:
        return Receipt(order_id=order.id, total_cents=sum(ln.qty for ln in order.lines))

    @app.task(name="t.quote")
    def quote(q: Quote) -> Quote:
        return Quote(sku=q.sku, price=q.price * 2)

    @app.task(name="t.stock", serializer="msgpack")
    def stock(s: Stock) -> Stock:
        return dataclasses.replace(s, counts={k: v + 1 for k, v in s.counts.items()})

    r1 = receipt.delay(Order(id="o", lines=[Line(sku="a", qty=3)]))
    r2 = quote.delay(Quote(sku="a", price=Decimal("1.25")))
    r3 = stock.delay(Stock("a", date(2024, 1, 1), {1: 1}))
    assert app.worker().run_until_idle() == 3
    assert r1.get(timeout=10) == Receipt(order_id="o", total_cents=3)
    assert r2.get(timeout=10) == Quote(sku="a", price=Decimal("2.50"))
    assert r3.get(timeout=10) == Stock("a", date(2024, 1, 1), {1: 2})


def test_send_task_by_name_is_decoded_into_the_registered_types(backend_app: App) -> None:
    app = backend_app
    sent = app.send_task(
        "t.total",
        args=[Order(id="o", lines=[Line(sku="a", qty=2)])],
        kwargs={"quote": Quote(sku="a", price=Decimal("1.5"))},
    )

    @app.task(name="t.total")
    def total(order: Order, quote: Quote) -> Decimal:
        return sum((quote.price * ln.qty for ln in order.lines), Decimal(0))

    app.worker().run_until_idle()
    assert sent.get(timeout=10) == Decimal("3.0")


def test_wrong_protobuf_bytes_are_dead_lettered_with_payload_error(backend_app: App) -> None:
    app = backend_app
    ran: list[object] = []

    @app.task(name="t.place")
    def place(order: Order) -> None:
        ran.append(order)

    foreign = base64.b64encode(Refund(order_id="o", full=True).SerializeToString()).decode()
    body = json.dumps(
        {
            "v": 1,
            "id": "wrong",
            "task": "t.place",
            "queue": "default",
            "args": [{"__tf__": "protobuf", "type": "taskflow.test.shop.Order", "v": foreign}],
        }
    )
    publish_raw(app, "wrong", body.encode())
    app.worker().run_until_idle()
    assert_dead_lettered_with_payload_error(app, "wrong")
    assert ran == []
