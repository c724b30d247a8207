"""Payload encode/decode cost per task: JSON vs protobuf vs msgpack, small and ~10 KB.

    python bench/payload.py [--n 20000] [--runs 5]

One "op" is what a task costs on each side of the broker, for one argument:

* encode: validate + encode the argument against the task's annotation
  (``PayloadSchema.encode_args``), then build the envelope bytes (``encode_envelope``);
* decode: parse the envelope bytes (``decode_envelope``), then decode the argument back to
  its annotated type (``PayloadSchema.decode_args``).

The same order travels as a dataclass under ``application/json``, as a dataclass under
``application/x-msgpack`` (``serializer="msgpack"``), and as a protobuf message (tagged
binary form inside the JSON envelope). Prints microseconds per op (median of ``--runs``) and
the envelope size in bytes.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples" / "typed"))

from shop_messages import Line as PbLine
from shop_messages import Order as PbOrder

from taskflow.codec import JSON, MSGPACK, decode_envelope, encode_envelope
from taskflow.message import Envelope
from taskflow.payload import PayloadSchema, build_schema


@dataclasses.dataclass
class Line:
    sku: str
    qty: int


@dataclasses.dataclass
class Order:
    id: str
    lines: list[Line]


def _dataclass_task(order: Order) -> None: ...


def _protobuf_task(order: PbOrder) -> None: ...


def _orders(lines: int) -> tuple[Order, Any]:
    items = [(f"sku-{i:05d}", i % 97) for i in range(lines)]
    plain = Order("order-1", [Line(sku, qty) for sku, qty in items])
    proto = PbOrder(id="order-1", lines=[PbLine(sku=sku, qty=qty) for sku, qty in items])
    return plain, proto


def _case(
    schema: PayloadSchema, value: Any, content_type: str
) -> tuple[Callable[[], bytes], Callable[[], Any]]:
    def encode() -> bytes:
        args, kwargs = schema.encode_args((value,), {})
        env = Envelope(
            id="t-1",
            task="bench.order",
            queue="default",
            args=args,
            kwargs=kwargs,
            created_at=1.0,
            content_type=content_type,
        )
        return encode_envelope(env)

    body = encode()

    def decode() -> Any:
        env = decode_envelope(body)
        return schema.decode_args(env.args, env.kwargs)

    assert decode()[0][0] == value, "round trip changed the value"
    return encode, decode


def _per_op_us(fn: Callable[[], Any], n: int, runs: int) -> float:
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        for _ in range(n):
            fn()
        samples.append((time.perf_counter() - start) / n * 1e6)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=20000, help="ops per run (small payload)")
    parser.add_argument("--runs", type=int, default=5)
    opts = parser.parse_args()
    dataclass_schema = build_schema(_dataclass_task, "bench.order")
    protobuf_schema = build_schema(_protobuf_task, "bench.order")
    print(f"{'payload':<8} {'codec':<10} {'bytes':>7} {'encode us':>10} {'decode us':>10}")
    # ~400 lines make the JSON envelope about 10 KB.
    for label, lines, n in (("small", 2, opts.n), ("10KB", 400, max(200, opts.n // 50))):
        plain, proto = _orders(lines)
        cases = {
            "json": _case(dataclass_schema, plain, JSON),
            "msgpack": _case(dataclass_schema, plain, MSGPACK),
            "protobuf": _case(protobuf_schema, proto, JSON),
        }
        for codec_name, (encode, decode) in cases.items():
            size = len(encode())
            enc = _per_op_us(encode, n, opts.runs)
            dec = _per_op_us(decode, n, opts.runs)
            print(f"{label:<8} {codec_name:<10} {size:>7} {enc:>10.2f} {dec:>10.2f}")


if __name__ == "__main__":
    main()
