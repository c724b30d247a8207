"""Property-based fuzzing of the envelope and payload decoders.

Whatever bytes or values arrive, a decoder either returns a valid value or raises its
documented error (EnvelopeError / PayloadError), which the worker turns into a dead letter.
Anything else (RecursionError, a ValueError from protobuf, KeyError, TypeError...) would
leave the message unsettled. A decoded envelope must also encode again: a retry re-publishes
it. Bounded and derandomized so that CI runs the same examples every time.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import enum
import math
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any, Literal, NamedTuple, TypedDict
from uuid import UUID

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from taskflow import Envelope
from taskflow.codec import EnvelopeError, decode_envelope, encode_envelope
from taskflow.errors import PayloadError
from taskflow.payload import build_schema, decode_any

FUZZ = settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

TAGS = [
    "datetime",
    "date",
    "time",
    "timedelta",
    "uuid",
    "decimal",
    "bytes",
    "tuple",
    "set",
    "frozenset",
    "dict",
    "protobuf",
    "pickle",
]
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
    | st.sampled_from(["nan", "inf", "", "2024-05-01", "AP8=", "ünï", "1e999", "__tf__"])
)


def _containers(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    tagged = st.builds(lambda tag, v: {"__tf__": tag, "v": v}, st.sampled_from(TAGS), children)
    protobuf = st.builds(
        lambda name, v: {"__tf__": "protobuf", "type": name, "v": v},
        st.sampled_from(["google.protobuf.Timestamp", "google.protobuf.Struct", "no.Such", ""]),
        st.text(max_size=12) | st.binary(max_size=12).map(lambda b: base64.b64encode(b).decode()),
    )
    return (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(max_size=6), children, max_size=4)
        | tagged
        | protobuf
    )


json_values = st.recursive(scalars, _containers, max_leaves=16)


# -- the envelope ------------------------------------------------------------------------
def _round_trips(body: bytes) -> None:
    try:
        env = decode_envelope(body)
    except EnvelopeError:
        return
    _assert_valid(env)
    assert decode_envelope(encode_envelope(env)) == env
    retry = env.replace(attempt=env.attempt + 1, eta=None)  # what a retry publishes
    assert decode_envelope(encode_envelope(retry)) == retry


def _finite(value: object) -> bool:
    return type(value) is float and math.isfinite(value)


def _assert_valid(env: Envelope) -> None:
    """What docs/protocol.md section 2 promises about a decoded envelope."""
    assert isinstance(env, Envelope) and type(env.v) is int and env.v == 1
    assert all(type(x) is str and x for x in (env.id, env.task, env.queue))
    assert type(env.priority) is int and 0 <= env.priority <= 9
    assert type(env.attempt) is int and env.attempt >= 1
    assert type(env.max_retries) is int and env.max_retries >= 0
    assert _finite(env.created_at)
    assert env.eta is None or _finite(env.eta)
    assert env.expires is None or _finite(env.expires)
    assert env.timeout is None or (_finite(env.timeout) and env.timeout > 0)
    assert type(env.args) is list and type(env.kwargs) is dict
    assert all(type(k) is str and type(v) is str for k, v in env.headers.items())
    assert env.canvas is None or type(env.canvas) is dict
    assert type(env.content_type) is str


@FUZZ
@given(st.binary(max_size=200))
def test_arbitrary_bytes_decode_or_raise_envelope_error(body: bytes) -> None:
    _round_trips(body)


ENVELOPE_FIELDS = [
    "v",
    "id",
    "task",
    "queue",
    "args",
    "kwargs",
    "priority",
    "created_at",
    "eta",
    "expires",
    "attempt",
    "max_retries",
    "timeout",
    "idempotency_key",
    "correlation_id",
    "parent_id",
    "root_id",
    "headers",
    "canvas",
    "content_type",
    "payload",
]
VALID = {
    "v": 1,
    "id": "t-1",
    "task": "fuzz.job",
    "queue": "q",
    "args": [1, "a", {"k": [1.5]}],
    "kwargs": {"flag": True},
    "priority": 3,
    "created_at": 1.0,
    "eta": 2.0,
    "expires": 3.0,
    "attempt": 2,
    "max_retries": 3,
    "timeout": 4.0,
    "headers": {"h": "v"},
    "canvas": {"v": 1, "frames": []},
}


@FUZZ
@given(st.dictionaries(st.sampled_from(ENVELOPE_FIELDS), json_values, max_size=10))
def test_arbitrary_json_objects_decode_or_raise_envelope_error(doc: dict[str, Any]) -> None:
    _round_trips(orjson.dumps(doc))


@FUZZ
@given(
    st.lists(
        st.tuples(st.sampled_from(ENVELOPE_FIELDS), json_values | st.just(...)),
        min_size=1,
        max_size=3,
    )
)
def test_mutated_valid_envelopes_decode_or_raise_envelope_error(
    mutations: list[tuple[str, Any]],
) -> None:
    doc = dict(VALID)
    for key, value in mutations:
        if value is ...:
            doc.pop(key, None)
        else:
            doc[key] = value
    _round_trips(orjson.dumps(doc))


@FUZZ
@given(st.lists(json_values, max_size=3), st.dictionaries(st.text(max_size=5), json_values))
def test_msgpack_payloads_decode_or_raise_envelope_error(
    args: list[Any], kwargs: dict[str, Any]
) -> None:
    msgpack = pytest.importorskip("msgpack")
    for unpacked in ([args, kwargs], [args], args, kwargs, [args, kwargs, 1]):
        packed = base64.b64encode(msgpack.packb(unpacked)).decode()
        doc = {**VALID, "content_type": "application/x-msgpack", "payload": packed}
        del doc["args"], doc["kwargs"]
        _round_trips(orjson.dumps(doc))


# -- the payload -------------------------------------------------------------------------
class Tier(enum.Enum):
    GOLD = "gold"
    LEVEL = 3


class Perm(enum.Flag):
    READ = 1
    WRITE = 2


@dataclasses.dataclass
class Line:
    sku: str
    qty: int = 1

    def __post_init__(self) -> None:
        if self.qty > 1000:
            raise KeyError("too many")  # a constructor failing in an unusual way


class Limits(TypedDict):
    size: int
    name: str


class Span(NamedTuple):
    start: date
    length: timedelta = timedelta(0)


@dataclasses.dataclass
class Tree:
    label: str
    children: list[Tree] = dataclasses.field(default_factory=list)


ANNOTATIONS: list[Any] = [
    Any,
    int,
    float,
    str,
    bool,
    bytes,
    datetime,
    date,
    timedelta,
    UUID,
    Decimal,
    Tier,
    Perm,
    Literal["a", 1],
    list[int],
    tuple[int, str],
    set[int],
    frozenset[str],
    dict[str, int],
    dict[int, UUID],
    Line,
    Limits,
    Span,
    Tree,
    int | None,
    UUID | datetime | None,
    list[Line] | dict[str, Line],
]


def _optional_annotations() -> list[Any]:
    extra: list[Any] = []
    try:
        from google.protobuf import struct_pb2, timestamp_pb2

        extra += [timestamp_pb2.Timestamp, struct_pb2.Struct]
    except ImportError:  # pragma: no cover - protobuf is in the dev extra
        pass
    try:
        import pydantic

        class Account(pydantic.BaseModel):
            email: str
            age: int = 0
            tags: dict[str, list[int]] = {}

            @pydantic.field_validator("age")
            @classmethod
            def adult(cls, value: int) -> int:
                if value > 150:
                    raise TypeError("not wrapped by pydantic")
                return value

        extra.append(Account)
    except ImportError:  # pragma: no cover - pydantic is in the dev extra
        pass
    return extra


SCHEMAS = []
for index, annotation in enumerate(ANNOTATIONS + _optional_annotations()):

    def job(value, *rest, key=None, **more):  # type: ignore[no-untyped-def]
        return value

    job.__annotations__ = {"value": annotation, "key": annotation, "return": annotation}
    SCHEMAS.append(build_schema(job, f"fuzz.job{index}"))


@FUZZ
@given(
    st.sampled_from(range(len(SCHEMAS))),
    st.lists(json_values, max_size=3),
    st.dictionaries(st.sampled_from(["key", "value", "other"]), json_values, max_size=2),
)
def test_payload_decoders_return_a_value_or_raise_payload_error(
    which: int, args: list[Any], kwargs: dict[str, Any]
) -> None:
    schema = SCHEMAS[which]
    with contextlib.suppress(PayloadError):
        schema.decode_args(args, kwargs)
    with contextlib.suppress(PayloadError):
        schema.decode_result(args[0] if args else None)


@FUZZ
@given(json_values)
def test_decode_any_returns_a_value_or_raises_payload_error(value: Any) -> None:
    with contextlib.suppress(PayloadError):
        decode_any(value)


# -- the cases found by hand -------------------------------------------------------------
def _nested(depth: int) -> Any:
    value: Any = "leaf"
    for level in range(depth):
        value = [value] if level % 2 else {"k": value}
    return value


@pytest.mark.parametrize("schema", SCHEMAS[:1] + SCHEMAS[-3:], ids=lambda s: s.task_name)
def test_a_value_nested_400_deep_is_a_payload_error(schema: Any) -> None:
    with pytest.raises(PayloadError):
        schema.decode_args([_nested(400)], {})


def test_an_envelope_nested_400_deep_is_undecodable() -> None:
    value = b"[" * 400 + b"1" + b"]" * 400
    with pytest.raises(EnvelopeError):
        decode_envelope(b'{"v":1,"id":"a","task":"t","queue":"q","args":[%s]}' % value)


def test_a_protobuf_value_with_non_ascii_text_is_a_payload_error() -> None:
    timestamp_pb2 = pytest.importorskip("google.protobuf.timestamp_pb2")
    wire = {"__tf__": "protobuf", "type": "google.protobuf.Timestamp", "v": "ünïcode"}

    def typed(when: timestamp_pb2.Timestamp) -> None: ...

    def untyped(when):  # type: ignore[no-untyped-def]
        ...

    for fn in (typed, untyped):
        with pytest.raises(PayloadError, match="bad base64"):
            build_schema(fn, "fuzz.when").decode_args([wire], {})
