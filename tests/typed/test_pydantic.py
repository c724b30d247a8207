"""Pydantic models as parameters and results: validated at both ends, never passed through."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from pydantic import BaseModel, Field

from taskflow import App, PayloadError
from tests.typed.helpers import assert_dead_lettered_with_payload_error, publish_raw


class Customer(BaseModel):
    email: str
    since: datetime


class Invoice(BaseModel):
    customer: Customer
    amount: Decimal = Field(gt=0)
    lines: list[str] = []


class Paid(BaseModel):
    invoice_email: str
    amount: Decimal


def register_pay(app: App, calls: list[Invoice]) -> object:
    @app.task(name="billing.pay")
    def pay(invoice: Invoice) -> Paid:
        calls.append(invoice)
        return Paid(invoice_email=invoice.customer.email, amount=invoice.amount)

    return pay


def an_invoice() -> Invoice:
    return Invoice(
        customer=Customer(email="a@b.c", since=datetime(2024, 1, 2, tzinfo=UTC)),
        amount=Decimal("12.50"),
        lines=["tea"],
    )


def test_a_model_parameter_and_result_round_trip_through_a_worker(app: App) -> None:
    calls: list[Invoice] = []
    register_pay(app, calls)
    result = app.send_task("billing.pay", args=[an_invoice()])
    app.worker().run_until_idle()
    assert calls == [an_invoice()] and type(calls[0]) is Invoice
    paid = result.get(timeout=5)
    assert type(paid) is Paid and paid == Paid(invoice_email="a@b.c", amount=Decimal("12.50"))


def test_a_model_is_validated_at_enqueue(app: App) -> None:
    register_pay(app, [])
    with pytest.raises(PayloadError, match=r"billing\.pay\(invoice\).*amount"):
        app.send_task(
            "billing.pay",
            args=[{"customer": {"email": "x", "since": "2024-01-02"}, "amount": "-1"}],
        )


def test_a_json_value_that_does_not_fit_the_model_is_dead_lettered(app: App) -> None:
    calls: list[Invoice] = []
    register_pay(app, calls)
    body = json.dumps(
        {
            "v": 1,
            "id": "bad-invoice",
            "task": "billing.pay",
            "queue": "default",
            "args": [{"customer": {"email": "a@b.c"}, "amount": "12.50"}],
        }
    )
    publish_raw(app, "bad-invoice", body.encode())
    app.worker().run_until_idle()
    message = assert_dead_lettered_with_payload_error(app, "bad-invoice")
    assert "customer.since" in message
    assert calls == []
