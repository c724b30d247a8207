"""Typed payloads on the process pool: the child decodes the arguments into the declared
types and encodes the result; what does not fit is a payload error, as on the thread pool."""

from __future__ import annotations

import json
import os
import sys
from decimal import Decimal

import pytest

from taskflow.errors import TaskFailed
from tests.typed.helpers import assert_dead_lettered_with_payload_error, publish_raw

from .conftest import APP_PATH, PoolApp
from .poolapp import Order, Receipt

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX processes")


def test_a_dataclass_argument_and_a_model_result_cross_to_the_child_and_back(
    pool_app: PoolApp,
) -> None:
    app, tasks = pool_app
    with app.worker(concurrency=1, pool="processes", app_path=APP_PATH):
        receipt = tasks["charge"].delay(Order(id="o-1", quantity=4)).get(timeout=10)

    assert type(receipt) is Receipt
    assert (receipt.order_id, receipt.total) == ("o-1", Decimal("10.00"))
    assert receipt.argument_type == "Order"  # the body got the dataclass, not a dict
    assert receipt.pid != os.getpid()


@pytest.mark.parametrize("pool", ["threads", "processes"])
def test_an_argument_that_does_not_fit_is_the_same_payload_error_on_both_pools(
    pool_app: PoolApp, pool: str
) -> None:
    app, _ = pool_app
    body = {"v": 1, "id": "bad-order", "task": "pool.charge", "queue": "default"}
    body["args"] = [{"id": "o-2", "quantity": "four-SECRET"}]
    publish_raw(app, "bad-order", json.dumps(body).encode())
    options = {"app_path": APP_PATH} if pool == "processes" else {}
    with app.worker(concurrency=1, pool=pool, **options):
        with pytest.raises(TaskFailed):
            app.result("bad-order").get(timeout=10)

    message = assert_dead_lettered_with_payload_error(app, "bad-order")
    assert message == "pool.charge(order.quantity): expected int, got str"
    assert "SECRET" not in message  # names the field, never the value


@pytest.mark.parametrize("pool", ["threads", "processes"])
def test_a_result_that_does_not_fit_is_the_same_payload_error_on_both_pools(
    pool_app: PoolApp, pool: str
) -> None:
    app, tasks = pool_app
    options = {"app_path": APP_PATH} if pool == "processes" else {}
    with app.worker(concurrency=1, pool=pool, **options):
        result = tasks["bad_result"].delay()
        with pytest.raises(TaskFailed):
            result.get(timeout=10)

    message = assert_dead_lettered_with_payload_error(app, result.id)
    assert message == "pool.bad_result(return): expected Receipt, got int"
