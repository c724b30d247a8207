"""``taskflow.test.shop`` messages, the run-time equivalent of a generated ``shop_pb2``.

The schema, as a ``.proto`` file would say it::

    syntax = "proto3";
    package taskflow.test.shop;
    import "google/protobuf/timestamp.proto";

    message Line { string sku = 1; int32 qty = 2; }
    message Order {
      string id = 1;
      repeated Line lines = 2;
      google.protobuf.Timestamp placed_at = 3;
    }
    message Receipt { string order_id = 1; int64 total_cents = 2; }
    message Refund { string order_id = 1; string reason = 2; bool full = 3; }
"""

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, timestamp_pb2

PACKAGE = "taskflow.test.shop"
_FILE = "taskflow/test/shop.proto"

_F = descriptor_pb2.FieldDescriptorProto
_FIELDS: dict[str, list[tuple[str, int, int, int, str]]] = {
    # message: [(field, number, type, label, type_name)]
    "Line": [
        ("sku", 1, _F.TYPE_STRING, _F.LABEL_OPTIONAL, ""),
        ("qty", 2, _F.TYPE_INT32, _F.LABEL_OPTIONAL, ""),
    ],
    "Order": [
        ("id", 1, _F.TYPE_STRING, _F.LABEL_OPTIONAL, ""),
        ("lines", 2, _F.TYPE_MESSAGE, _F.LABEL_REPEATED, f".{PACKAGE}.Line"),
        ("placed_at", 3, _F.TYPE_MESSAGE, _F.LABEL_OPTIONAL, ".google.protobuf.Timestamp"),
    ],
    "Receipt": [
        ("order_id", 1, _F.TYPE_STRING, _F.LABEL_OPTIONAL, ""),
        ("total_cents", 2, _F.TYPE_INT64, _F.LABEL_OPTIONAL, ""),
    ],
    "Refund": [
        ("order_id", 1, _F.TYPE_STRING, _F.LABEL_OPTIONAL, ""),
        ("reason", 2, _F.TYPE_STRING, _F.LABEL_OPTIONAL, ""),
        ("full", 3, _F.TYPE_BOOL, _F.LABEL_OPTIONAL, ""),
    ],
}


def _file() -> descriptor_pb2.FileDescriptorProto:
    proto = descriptor_pb2.FileDescriptorProto(
        name=_FILE,
        package=PACKAGE,
        syntax="proto3",
        dependency=[timestamp_pb2.DESCRIPTOR.name],
    )
    for message, fields in _FIELDS.items():
        described = proto.message_type.add(name=message)
        for name, number, kind, label, type_name in fields:
            field = described.field.add(name=name, number=number, type=kind, label=label)
            if type_name:  # setting it at all, even to "", marks the field as a reference
                field.type_name = type_name
    return proto


def _register() -> dict[str, Any]:
    pool = descriptor_pool.Default()
    try:
        pool.FindFileByName(_FILE)
    except KeyError:  # first import in this process
        pool.Add(_file())
    return {
        name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{PACKAGE}.{name}"))
        for name in _FIELDS
    }


_CLASSES = _register()
# Typed as Any: the classes exist only at run time (a generated module would ship stubs).
Line: Any = _CLASSES["Line"]
Order: Any = _CLASSES["Order"]
Receipt: Any = _CLASSES["Receipt"]
Refund: Any = _CLASSES["Refund"]
