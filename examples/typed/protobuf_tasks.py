"""Protobuf messages as task arguments and results, on the in-process memory broker.

    python examples/typed/protobuf_tasks.py

Shows: a protobuf parameter arriving as its class, a protobuf result coming back from
``get()`` as its class, the same task enqueued from a raw JSON envelope (what a Go or
JavaScript producer sends, see docs/protocol.md), and a payload of the wrong message type
ending in the dead-letter list with ``PayloadError`` instead of reaching the function.
"""

from __future__ import annotations

import base64
import json
import sys
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))  # for shop_messages, next to this file

from shop_messages import Line, Order, Receipt

from taskflow import App, TaskFailed
from taskflow.brokers import Message
from taskflow.brokers.base import BrokerAdmin

app = App("typed-protobuf")  # memory:// broker and results


@app.task(name="shop.place")
def place(order: Order, *, express: bool = False) -> Receipt:
    """Price an order: 2.50 per item, plus 5.00 for express delivery."""
    total = sum(line.qty for line in order.lines) * 250 + (500 if express else 0)
    return Receipt(order_id=order.id, total_cents=total)


def publish_json(body: dict[str, object]) -> str:
    """Publish a hand-built envelope, as a producer in another language would."""
    task_id = str(body["id"])
    message = Message(id=task_id, queue="default", body=json.dumps(body).encode())
    app.kernel.call(app.broker.publish([message]))
    return task_id


def main() -> None:
    order = Order(id="o-1", lines=[Line(sku="tea", qty=2), Line(sku="cup", qty=1)])
    order.placed_at.GetCurrentTime()
    with app.worker(concurrency=2):
        receipt = place.delay(order, express=True).get(timeout=5)
        print(f"typed call:   {type(receipt).__name__} {receipt.order_id} {receipt.total_cents}")

        raw = {
            "__tf__": "protobuf",
            "type": "shop.v1.Order",
            "v": base64.b64encode(order.SerializeToString()).decode(),
        }
        task_id = publish_json(
            {
                "v": 1,
                "id": str(uuid.uuid4()),
                "task": "shop.place",
                "queue": "default",
                "args": [raw],
            }
        )
        print(f"raw envelope: {app.result(task_id).get(timeout=5).total_cents} cents")

        wrong = {
            "__tf__": "protobuf",
            "type": "shop.v1.Order",
            "v": base64.b64encode(
                Receipt(order_id="x", total_cents=1).SerializeToString()
            ).decode(),
        }
        bad_id = publish_json(
            {
                "v": 1,
                "id": str(uuid.uuid4()),
                "task": "shop.place",
                "queue": "default",
                "args": [wrong],
            }
        )
        try:
            app.result(bad_id).get(timeout=5)
        except TaskFailed as exc:
            print(f"wrong bytes:  {exc.exc_type}: {exc.message}")
    assert isinstance(app.broker, BrokerAdmin)  # the memory broker has the admin actions
    letters = app.kernel.call(app.broker.dead_letters("default"))
    print(f"dead letters: {[(d.id == bad_id, d.reason) for d in letters]}")
    app.close()


if __name__ == "__main__":
    main()
