"""``shop.v1`` message classes, equivalent to a ``shop_pb2`` generated from shop.proto.

A real project runs ``protoc`` and imports the generated module; building the descriptor by
hand here keeps the example runnable with nothing but ``pip install protobuf``.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, timestamp_pb2

_F = descriptor_pb2.FieldDescriptorProto
_FILE = "shop/v1/shop.proto"


def _build() -> descriptor_pb2.FileDescriptorProto:
    proto = descriptor_pb2.FileDescriptorProto(
        name=_FILE, package="shop.v1", syntax="proto3", dependency=[timestamp_pb2.DESCRIPTOR.name]
    )
    line = proto.message_type.add(name="Line")
    line.field.add(name="sku", number=1, type=_F.TYPE_STRING)
    line.field.add(name="qty", number=2, type=_F.TYPE_INT32)
    order = proto.message_type.add(name="Order")
    order.field.add(name="id", number=1, type=_F.TYPE_STRING)
    order.field.add(
        name="lines",
        number=2,
        type=_F.TYPE_MESSAGE,
        label=_F.LABEL_REPEATED,
        type_name=".shop.v1.Line",
    )
    order.field.add(
        name="placed_at", number=3, type=_F.TYPE_MESSAGE, type_name=".google.protobuf.Timestamp"
    )
    receipt = proto.message_type.add(name="Receipt")
    receipt.field.add(name="order_id", number=1, type=_F.TYPE_STRING)
    receipt.field.add(name="total_cents", number=2, type=_F.TYPE_INT64)
    return proto


def _classes() -> dict[str, Any]:
    pool = descriptor_pool.Default()
    try:
        pool.FindFileByName(_FILE)
    except KeyError:
        pool.Add(_build())
    return {
        name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"shop.v1.{name}"))
        for name in ("Line", "Order", "Receipt")
    }


_MESSAGES = _classes()
Line: Any = _MESSAGES["Line"]
Order: Any = _MESSAGES["Order"]
Receipt: Any = _MESSAGES["Receipt"]
