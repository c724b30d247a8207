"""The typed registry: producers with only a task name; the worker decodes into the types."""

from __future__ import annotations

import dataclasses
import enum
import json
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID

import pytest

from taskflow import App
from taskflow.payload import build_schema, encode_any
from tests.typed.helpers import assert_dead_lettered_with_payload_error, publish_raw
from tests.typed.protos.shop import Line


class Tier(enum.Enum):
    GOLD = "gold"
    BASIC = "basic"


@dataclasses.dataclass(frozen=True)
class Account:
    id: UUID
    tier: Tier
    opened: date


def test_send_task_before_the_function_is_known_is_decoded_into_the_annotated_types(
    app: App,
) -> None:
    # The producer side: this app has no task of that name yet, like a process that only
    # knows the name, so the arguments go out in the un-annotated (tagged) encoding.
    account = Account(UUID(int=7), Tier.GOLD, date(2020, 2, 29))
    sent = app.send_task(
        "crm.bill",
        args=[account, Decimal("9.99"), datetime(2024, 1, 1, 12, tzinfo=UTC)],
        kwargs={"tags": ("vip", "eu"), "grace": timedelta(days=3), "line": Line(sku="x")},
    )
    seen: list[tuple[Any, ...]] = []

    @app.task(name="crm.bill")
    def bill(
        account: Account,
        amount: Decimal,
        at: datetime,
        *,
        tags: list[str],
        grace: timedelta,
        line: Line,
    ) -> str:
        seen.append((account, amount, at, tags, grace, line))
        return f"{account.tier.value}:{amount}"

    app.worker().run_until_idle()
    assert sent.get(timeout=5) == "gold:9.99"
    assert seen == [
        (
            account,
            Decimal("9.99"),
            datetime(2024, 1, 1, 12, tzinfo=UTC),
            ["vip", "eu"],
            timedelta(days=3),
            Line(sku="x"),
        )
    ]


@pytest.mark.parametrize(
    ("annotation", "value"),
    [
        (datetime, datetime(2024, 5, 1, 8, 30, tzinfo=UTC)),
        (date, date(2024, 5, 1)),
        (UUID, UUID(int=1)),
        (Decimal, Decimal("1.10")),
        (bytes, b"\x00\xff"),
        (timedelta, timedelta(seconds=90)),
        (list[int], (1, 2)),
        (set[int], {3, 1}),
        (tuple[int, str], (1, "a")),
        (dict[str, Decimal], {"__tf__": Decimal(1)}),
        (datetime | None, datetime(2024, 5, 1, tzinfo=UTC)),
        (str | datetime, datetime(2024, 5, 1, tzinfo=UTC)),
    ],
)
def test_typed_decoding_accepts_the_tagged_form_of_its_own_type(
    annotation: Any, value: Any
) -> None:
    def task(x):  # type: ignore[no-untyped-def]
        return x

    task.__annotations__ = {"x": annotation}
    schema = build_schema(task, "t.tagged")
    args, _ = schema.decode_args([encode_any(value)], {})
    expected = list(value) if annotation == list[int] else value
    assert args == (expected,)


def test_a_json_value_that_does_not_fit_the_registered_type_is_dead_lettered(app: App) -> None:
    ran: list[int] = []

    @app.task(name="math.double")
    def double(x: int) -> int:
        ran.append(x)
        return 2 * x

    body = json.dumps(
        {"v": 1, "id": "not-int", "task": "math.double", "queue": "default", "args": ["one"]}
    )
    publish_raw(app, "not-int", body.encode())
    app.worker().run_until_idle()
    message = assert_dead_lettered_with_payload_error(app, "not-int")
    assert "math.double(x): expected int, got str" in message and "one" not in message
    assert ran == []


def test_a_tag_of_another_type_is_not_accepted(app: App) -> None:
    @app.task(name="cal.day")
    def day(d: date) -> str:
        return d.isoformat()

    body = json.dumps(
        {
            "v": 1,
            "id": "tag",
            "task": "cal.day",
            "queue": "default",
            "args": [{"__tf__": "uuid", "v": str(UUID(int=1))}],
        }
    )
    publish_raw(app, "tag", body.encode())
    app.worker().run_until_idle()
    assert_dead_lettered_with_payload_error(app, "tag")
