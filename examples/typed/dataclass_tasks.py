"""Dataclass, enum, Decimal and datetime arguments, validated at both ends.

    python examples/typed/dataclass_tasks.py

Shows: annotations as the payload schema (a bad argument fails at the call site, naming the
parameter), a dataclass result decoded back to its class by ``get()``, ``send_task`` by name
from code that does not import the function, and msgpack as an opt-in payload serializer.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal

from taskflow import App, PayloadError

app = App("typed-dataclasses")  # memory:// broker and results


class Tier(enum.Enum):
    BASIC = "basic"
    GOLD = "gold"


@dataclass(frozen=True)
class Customer:
    email: str
    tier: Tier = Tier.BASIC


@dataclass
class Invoice:
    customer: Customer
    amounts: list[Decimal]
    issued: datetime
    notes: dict[str, str] = field(default_factory=dict)


@dataclass
class Summary:
    email: str
    total: Decimal
    discounted: bool


@app.task(name="billing.summarize")
def summarize(invoice: Invoice, discount: Decimal = Decimal("0.10")) -> Summary:
    """Total an invoice; gold customers get ``discount`` off."""
    total = sum(invoice.amounts, Decimal(0))
    gold = invoice.customer.tier is Tier.GOLD
    if gold:
        total -= (total * discount).quantize(Decimal("0.01"))
    return Summary(invoice.customer.email, total, gold)


@app.task(name="billing.bulk_total", serializer="msgpack")
def bulk_total(amounts: list[Decimal]) -> Decimal:
    """The same payload rules, sent as msgpack inside the JSON envelope."""
    return sum(amounts, Decimal(0))


def main() -> None:
    invoice = Invoice(
        Customer("ada@example.com", Tier.GOLD),
        [Decimal("10.00"), Decimal("2.50")],
        datetime(2024, 5, 1, 9, 30, tzinfo=UTC),
    )
    try:
        summarize.delay(invoice, discount=0.1)  # type: ignore[arg-type]  # a float, not Decimal
    except PayloadError as exc:
        print(f"refused at the call site: {exc}")

    with app.worker(concurrency=2):
        summary = summarize.delay(invoice).get(timeout=5)
        print(f"typed result: {summary!r}")
        # By name: a process that does not import the task sends the un-annotated (tagged)
        # forms, and the worker still decodes them into Invoice and Decimal.
        by_name = app.send_task(
            "billing.summarize", args=[invoice], kwargs={"discount": Decimal("0.5")}
        )
        print(f"by name:      {by_name.get(timeout=5)!r}")
        packed = bulk_total.delay([Decimal("1.10"), Decimal("2.20")])
        print(f"msgpack:      {packed.get(timeout=5)}")
    app.close()


if __name__ == "__main__":
    main()
