"""Unit tests for taskflow.payload: annotation-driven argument and result codecs."""

import dataclasses
import enum
import inspect
import json
import typing
from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime, time, timedelta, timezone
from decimal import Decimal
from typing import Annotated, Any, Literal, NamedTuple, NewType, NotRequired, TypedDict
from uuid import UUID

import pytest

from taskflow.errors import PayloadError
from taskflow.payload import PayloadSchema, build_schema, decode_any, encode_any

# --------------------------------------------------------------------------- fixtures/types


class Color(enum.Enum):
    RED = "red"
    GREEN = "green"


class Priority(enum.IntEnum):
    LOW = 1
    HIGH = 2


class Size(enum.StrEnum):
    S = "s"
    M = "m"


@dataclasses.dataclass
class LineItem:
    sku: str
    qty: int


@dataclasses.dataclass
class Order:
    order_id: UUID
    items: list[LineItem]
    note: str | None = None
    created: datetime = dataclasses.field(default_factory=lambda: datetime(2024, 1, 1))


@dataclasses.dataclass
class TreeNode:
    label: str
    children: list["TreeNode"] = dataclasses.field(default_factory=list)


T = typing.TypeVar("T")


@dataclasses.dataclass
class Box(typing.Generic[T]):
    content: T


class Config(TypedDict):
    host: str
    port: int
    debug: NotRequired[bool]


class Point(NamedTuple):
    x: int
    y: int = 0


UserId = NewType("UserId", int)


class Opaque:
    """An arbitrary class taskflow cannot encode."""


def schema_for(annotation: Any, name: str = "t.rt") -> PayloadSchema:
    """A schema for a one-parameter task whose parameter and result use ``annotation``."""

    def task(value):  # type: ignore[no-untyped-def]
        return value

    task.__annotations__ = {"value": annotation, "return": annotation}
    return build_schema(task, name)


def over_the_wire(value: Any) -> Any:
    """What the worker sees after the envelope is JSON-encoded and decoded again."""
    return json.loads(json.dumps(value, allow_nan=False))


def roundtrip(
    schema: PayloadSchema, *args: Any, **kwargs: Any
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    wire_args, wire_kwargs = schema.encode_args(args, kwargs)
    return schema.decode_args(over_the_wire(wire_args), over_the_wire(wire_kwargs))


AWARE = datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=timezone(timedelta(hours=2)))

ROUND_TRIP_CASES: list[tuple[Any, Any]] = [
    (int, 42),
    (float, 1.5),
    (str, "hello"),
    (bool, True),
    (None, None),
    (bytes, b"\x00\xffbinary"),
    (datetime, datetime(2024, 5, 6, 7, 8, 9, 10)),
    (datetime, AWARE),
    (date, date(2024, 2, 29)),
    (time, time(23, 59, 1, 5, tzinfo=UTC)),
    (timedelta, timedelta(days=3, seconds=7, microseconds=11)),
    (UUID, UUID("12345678-1234-5678-1234-567812345678")),
    (Decimal, Decimal("12.3400")),
    (Color, Color.GREEN),
    (Priority, Priority.HIGH),
    (Size, Size.M),
    (int | None, 5),
    (int | None, None),
    (typing.Optional[str], "x"),  # noqa: UP045 - the typing spelling must work too
    (int | str, "five"),
    (Literal["a", "b"], "b"),
    (list[int], [1, 2, 3]),
    (tuple[int, ...], (1, 2, 3)),
    (tuple[int, str], (1, "a")),
    (tuple[()], ()),
    (set[int], {3, 1, 2}),
    (frozenset[str], frozenset({"b", "a"})),
    (dict[str, int], {"a": 1}),
    (dict[int, str], {1: "a", 20: "b"}),
    (dict[UUID, date], {UUID(int=7): date(2020, 1, 1)}),
    (dict[Priority, int], {Priority.LOW: 1}),
    (dict[Color, list[int]], {Color.RED: [1]}),
    (Sequence[int], [1, 2]),
    (Mapping[str, float], {"a": 1.5}),
    (list, [1, "a", None]),
    (dict, {"a": [1, {"b": 2}]}),
    (Annotated[int, "meta"], 7),
    (UserId, UserId(9)),
    (LineItem, LineItem("apple", 3)),
    (Order, Order(UUID(int=1), [LineItem("a", 1), LineItem("b", 2)], note="gift")),
    (TreeNode, TreeNode("root", [TreeNode("leaf")])),
    (Box[int], Box(5)),
    (Config, {"host": "h", "port": 1}),
    (Config, {"host": "h", "port": 1, "debug": True}),
    (Point, Point(1, 2)),
    (Any, {"nested": [1, (2, 3), {4}]}),
]


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize(
    ("annotation", "value"),
    ROUND_TRIP_CASES,
    ids=[f"{i}-{a!r}" for i, (a, _) in enumerate(ROUND_TRIP_CASES)],
)
def test_each_supported_type_round_trips_through_json_to_an_equal_value_of_the_same_type(
    annotation: Any, value: Any
) -> None:
    schema = schema_for(annotation)

    (decoded,), _ = roundtrip(schema, value)
    result = schema.decode_result(over_the_wire(schema.encode_result(value)))

    assert decoded == value
    assert type(decoded) is type(value)
    assert result == value
    assert type(result) is type(value)


def test_aware_datetime_keeps_its_offset_and_naive_datetime_stays_naive() -> None:
    schema = schema_for(datetime)

    (aware,), _ = roundtrip(schema, AWARE)
    (naive,), _ = roundtrip(schema, datetime(2024, 1, 1, 12))

    assert aware.utcoffset() == timedelta(hours=2)
    assert naive.tzinfo is None


def test_dict_int_keys_travel_as_strings_and_come_back_as_ints() -> None:
    schema = schema_for(dict[int, str])

    wire, _ = schema.encode_args(({1: "a", 2: "b"},), {})

    assert wire == [{"1": "a", "2": "b"}]
    assert schema.decode_args(wire, {})[0] == ({1: "a", 2: "b"},)


def test_sets_are_encoded_in_sorted_order_so_the_wire_form_is_deterministic() -> None:
    schema = schema_for(set[int])

    assert schema.encode_args(({3, 1, 2},), {})[0] == [[1, 2, 3]]


def test_float_parameter_accepts_an_int_and_decodes_it_as_float() -> None:
    (decoded,), _ = roundtrip(schema_for(float), 3)

    assert decoded == 3.0
    assert type(decoded) is float


def test_float_parameter_rejects_nan_because_json_cannot_carry_it() -> None:
    with pytest.raises(PayloadError, match=r"t\.rt\(value\): expected finite float"):
        schema_for(float).encode_args((float("nan"),), {})


def test_scalar_values_pass_through_unchanged_on_the_fast_path() -> None:
    def task(a: int, b: str, c, d: float | None = None):  # type: ignore[no-untyped-def]
        pass

    schema = build_schema(task, "t.fast")
    text = "some text"

    args, kwargs = schema.encode_args((1, text, None), {"d": 2.5})

    assert args == [1, text, None]
    assert args[1] is text
    assert kwargs == {"d": 2.5}


def test_encoding_keeps_positional_and_keyword_arguments_as_the_caller_gave_them() -> None:
    def add(x: int, y: int) -> int:
        return x + y

    schema = build_schema(add, "shop.add")

    assert schema.encode_args((1,), {"y": 2}) == ([1], {"y": 2})
    assert roundtrip(schema, 1, y=2) == ((1,), {"y": 2})
    assert roundtrip(schema, x=1, y=2) == ((), {"x": 1, "y": 2})


# --------------------------------------------------------------------------- scalar validation


def test_int_parameter_rejects_str_naming_task_parameter_and_expected_type() -> None:
    def send(to: int) -> None:
        pass

    with pytest.raises(PayloadError) as info:
        build_schema(send, "shop.send").encode_args(("abc",), {})

    assert str(info.value) == "shop.send(to): expected int, got str"


def test_int_parameter_rejects_bool() -> None:
    with pytest.raises(PayloadError, match="expected int, got bool$"):
        schema_for(int).encode_args((True,), {})


def test_int_parameter_rejects_bool_when_decoding_too() -> None:
    with pytest.raises(PayloadError, match="expected int, got bool"):
        schema_for(int).decode_args([False], {})


def test_payload_error_is_also_a_type_error() -> None:
    with pytest.raises(TypeError):
        schema_for(str).encode_args((1,), {})


def test_a_bad_value_is_named_by_its_type_never_quoted() -> None:
    with pytest.raises(PayloadError) as info:
        schema_for(int).encode_args(("x" * 500,), {})

    assert str(info.value) == "t.rt(value): expected int, got str"


def test_literal_rejects_true_where_one_is_expected() -> None:
    with pytest.raises(PayloadError, match=r"expected Literal\[1, 2\]"):
        schema_for(Literal[1, 2]).encode_args((True,), {})


def test_enum_decoding_rejects_an_unknown_value() -> None:
    with pytest.raises(PayloadError, match="expected Color, got str$"):
        schema_for(Color).decode_args(["blue"], {})


def test_enum_parameter_rejects_its_raw_value_at_encode() -> None:
    with pytest.raises(PayloadError, match="expected Color"):
        schema_for(Color).encode_args(("red",), {})


def test_str_enum_member_is_sent_as_a_plain_string_for_a_str_parameter() -> None:
    wire, _ = schema_for(str).encode_args((Size.S,), {})

    assert wire == ["s"]
    assert type(wire[0]) is str


def test_date_parameter_rejects_a_datetime() -> None:
    with pytest.raises(PayloadError, match="expected date, got datetime"):
        schema_for(date).encode_args((datetime(2024, 1, 1),), {})


def test_decoding_a_malformed_uuid_names_the_expected_type() -> None:
    with pytest.raises(PayloadError, match=r"t\.rt\(value\): expected UUID, got str"):
        schema_for(UUID).decode_args(["not-a-uuid"], {})


def test_sequence_parameter_does_not_accept_a_string() -> None:
    with pytest.raises(PayloadError, match=r"expected Sequence\[str\], got str"):
        schema_for(Sequence[str]).encode_args(("abc",), {})


def test_fixed_length_tuple_rejects_the_wrong_length() -> None:
    with pytest.raises(PayloadError, match=r"expected tuple\[int, str\]"):
        schema_for(tuple[int, str]).decode_args([[1, "a", 2]], {})


# --------------------------------------------------------------------------- unions


def test_optional_parameter_accepts_none_and_the_inner_type_only() -> None:
    schema = schema_for(int | None)

    assert schema.encode_args((None,), {})[0] == [None]
    with pytest.raises(PayloadError, match=r"expected int, got str"):
        schema.encode_args(("1",), {})


def test_union_prefers_the_member_the_value_is_an_instance_of() -> None:
    schema = schema_for(float | int)

    (as_int,), _ = roundtrip(schema, 3)
    (as_float,), _ = roundtrip(schema, 3.5)

    assert type(as_int) is int
    assert type(as_float) is float


def test_union_keeps_bool_distinct_from_int() -> None:
    schema = schema_for(int | bool)

    (decoded,), _ = roundtrip(schema, True)

    assert decoded is True


def test_union_decodes_to_the_first_member_that_accepts_the_wire_value() -> None:
    schema = schema_for(date | str)

    (as_date,), _ = roundtrip(schema, date(2024, 1, 2))
    (as_text,), _ = roundtrip(schema, "hello")

    assert as_date == date(2024, 1, 2)
    assert as_text == "hello"


def test_union_mismatch_names_all_members() -> None:
    with pytest.raises(PayloadError, match=r"t\.rt\(value\): expected int \| str, got float"):
        schema_for(int | str).encode_args((1.5,), {})


def test_optional_dataclass_reports_the_nested_path_of_the_bad_field() -> None:
    with pytest.raises(PayloadError, match=r"t\.rt\(value\.qty\): expected int, got str"):
        schema_for(LineItem | None).encode_args((LineItem("a", "x"),), {})  # type: ignore[arg-type]


# --------------------------------------------------------------------------- structured types


def test_nested_dataclass_list_error_names_the_full_path() -> None:
    def place(order: Order) -> None:
        pass

    schema = build_schema(place, "shop.place")
    items = [LineItem("a", 1), LineItem("b", 2), LineItem("c", "3")]  # type: ignore[arg-type]

    with pytest.raises(PayloadError) as info:
        schema.encode_args((Order(UUID(int=1), items),), {})

    assert str(info.value) == "shop.place(order.items[2].qty): expected int, got str"


def test_list_parameter_error_names_the_index() -> None:
    def f(items: list[LineItem]) -> None:
        pass

    items = [LineItem("a", 1), LineItem("b", "x")]  # type: ignore[arg-type]

    with pytest.raises(PayloadError) as info:
        build_schema(f, "shop.f").encode_args((items,), {})

    assert str(info.value) == "shop.f(items[1].qty): expected int, got str"


def test_dataclass_decoding_rejects_an_unknown_field() -> None:
    with pytest.raises(PayloadError, match=r"unknown field for LineItem \(its fields: sku, qty"):
        schema_for(LineItem).decode_args([{"sku": "a", "qty": 1, "colour": "red"}], {})


def test_dataclass_decoding_fills_missing_fields_that_have_defaults() -> None:
    wire = {"order_id": str(UUID(int=3)), "items": []}

    (order,), _ = schema_for(Order).decode_args([wire], {})

    assert order == Order(UUID(int=3), [])


def test_dataclass_decoding_rejects_a_missing_required_field() -> None:
    with pytest.raises(PayloadError, match="missing required field 'qty' for LineItem"):
        schema_for(LineItem).decode_args([{"sku": "a"}], {})


def test_dataclass_parameter_rejects_a_plain_dict_at_encode() -> None:
    with pytest.raises(PayloadError, match="expected LineItem, got dict"):
        schema_for(LineItem).encode_args(({"sku": "a", "qty": 1},), {})


def test_typed_dict_missing_required_key_is_rejected() -> None:
    with pytest.raises(PayloadError, match="missing required field 'port' for Config"):
        schema_for(Config).encode_args(({"host": "h"},), {})


def test_typed_dict_value_errors_name_the_key() -> None:
    with pytest.raises(PayloadError, match=r"t\.rt\(value\['port'\]\): expected int"):
        schema_for(Config).encode_args(({"host": "h", "port": "80"},), {})


def test_named_tuple_travels_as_a_list() -> None:
    wire, _ = schema_for(Point).encode_args((Point(1, 2),), {})

    assert wire == [[1, 2]]
    assert schema_for(Point).decode_args([[4]], {})[0] == (Point(4, 0),)


def test_dict_with_int_keys_rejects_a_non_numeric_key_when_decoding() -> None:
    with pytest.raises(PayloadError, match=r"t\.rt\(value\[<key>\]\): bad dict key"):
        schema_for(dict[int, int]).decode_args([{"x": 1}], {})


# --------------------------------------------------------------------------- binding


def add(x: int, y: int) -> int:
    return x + y


def test_missing_required_argument_is_rejected_naming_the_task() -> None:
    with pytest.raises(PayloadError) as info:
        build_schema(add, "shop.add").encode_args((1,), {})

    assert str(info.value) == "shop.add: missing required argument 'y'"


def test_too_many_positional_arguments_are_rejected() -> None:
    with pytest.raises(PayloadError, match="shop.add: takes 2 positional arguments but 3 were"):
        build_schema(add, "shop.add").encode_args((1, 2, 3), {})


def test_unknown_keyword_argument_is_rejected() -> None:
    with pytest.raises(PayloadError, match="shop.add: got an unexpected keyword argument 'z'"):
        build_schema(add, "shop.add").encode_args((1, 2), {"z": 3})


def test_argument_given_both_positionally_and_by_keyword_is_rejected() -> None:
    with pytest.raises(PayloadError, match="got multiple values for argument 'x'"):
        build_schema(add, "shop.add").encode_args((1,), {"x": 1, "y": 2})


def test_positional_only_parameter_passed_by_keyword_is_rejected() -> None:
    def f(a: int, /) -> None:
        pass

    with pytest.raises(PayloadError, match="positional-only argument 'a' passed as keyword"):
        build_schema(f, "t.po").encode_args((), {"a": 1})


def test_missing_keyword_only_argument_is_rejected() -> None:
    def f(*, flag: bool) -> None:
        pass

    with pytest.raises(PayloadError, match="missing required argument 'flag'"):
        build_schema(f, "t.kw").bind_check((), {})


def test_bind_check_accepts_a_call_that_binds() -> None:
    build_schema(add, "shop.add").bind_check((1,), {"y": 2})


def test_decoding_rejects_extra_and_missing_arguments() -> None:
    schema = build_schema(add, "shop.add")

    with pytest.raises(PayloadError, match="takes 2 positional arguments"):
        schema.decode_args([1, 2, 3], {})
    with pytest.raises(PayloadError, match="missing required argument 'y'"):
        schema.decode_args([1], {})


def test_decoding_rejects_a_wire_value_of_the_wrong_type() -> None:
    with pytest.raises(PayloadError, match=r"shop\.add\(y\): expected int, got str"):
        build_schema(add, "shop.add").decode_args([1], {"y": "2"})


def test_var_args_and_var_kwargs_apply_their_element_annotation() -> None:
    def total(*amounts: Decimal, **labels: date) -> None:
        pass

    schema = build_schema(total, "t.total")

    args, kwargs = roundtrip(schema, Decimal("1.5"), Decimal(2), due=date(2024, 1, 1))

    assert args == (Decimal("1.5"), Decimal(2))
    assert kwargs == {"due": date(2024, 1, 1)}
    with pytest.raises(PayloadError, match=r"t\.total\(amounts\[1\]\): expected Decimal"):
        schema.encode_args((Decimal(1), 2.0), {})
    with pytest.raises(PayloadError, match=r"t\.total\(due\): expected date"):
        schema.encode_args((), {"due": "2024-01-01"})


def test_var_kwargs_collect_a_positional_only_name_passed_by_keyword() -> None:
    def f(a: int, /, **rest: int) -> None:
        pass

    assert roundtrip(build_schema(f, "t.f"), 1, a=2) == ((1,), {"a": 2})


# --------------------------------------------------------------------------- bind=True


class TaskContext:
    """Stands in for the worker's context object (an arbitrary class)."""


def test_skip_first_leaves_the_context_parameter_out_of_the_payload() -> None:
    def bound(ctx: TaskContext, x: int) -> int:
        return x

    schema = build_schema(bound, "t.bound", skip_first=True)

    assert roundtrip(schema, 5) == ((5,), {})
    with pytest.raises(PayloadError, match="missing required argument 'x'"):
        schema.encode_args((), {})


def test_skip_first_requires_a_positional_first_parameter() -> None:
    def no_params() -> None:
        pass

    with pytest.raises(PayloadError, match="t.empty: a bound task needs a first positional"):
        build_schema(no_params, "t.empty", skip_first=True)


# --------------------------------------------------------------------------- results


def test_return_value_is_encoded_and_decoded_with_the_return_annotation() -> None:
    def make() -> list[LineItem]:
        return []

    schema = build_schema(make, "t.make")

    wire = schema.encode_result([LineItem("a", 1)])

    assert wire == [{"sku": "a", "qty": 1}]
    assert schema.decode_result(over_the_wire(wire)) == [LineItem("a", 1)]


def test_return_value_that_does_not_fit_names_return() -> None:
    with pytest.raises(PayloadError) as info:
        build_schema(add, "shop.add").encode_result("3")

    assert str(info.value) == "shop.add(return): expected int, got str"


def test_none_return_annotation_only_accepts_none() -> None:
    def f() -> None:
        pass

    schema = build_schema(f, "t.none")

    assert schema.encode_result(None) is None
    with pytest.raises(PayloadError, match=r"t\.none\(return\): expected None"):
        schema.encode_result(1)


def test_missing_return_annotation_uses_the_generic_encoding() -> None:
    def f(x):  # type: ignore[no-untyped-def]
        return x

    schema = build_schema(f, "t.any")

    wire = schema.encode_result((1, b"x"))

    assert schema.decode_result(over_the_wire(wire)) == (1, b"x")


# --------------------------------------------------------------------------- un-annotated


SPECIAL_VALUES: dict[str, Any] = {
    "datetime": AWARE,
    "date": date(2024, 1, 2),
    "time": time(1, 2, 3),
    "timedelta": timedelta(seconds=90.5),
    "uuid": UUID(int=42),
    "decimal": Decimal("0.1"),
    "bytes": b"\x01\x02",
    "tuple": (1, "a", (2,)),
    "set": {1, 2},
    "frozenset": frozenset({"x"}),
    "nested": [{"when": date(2000, 1, 1)}, None, True, 1.25],
}


def test_unannotated_parameters_round_trip_special_types_with_tagged_values() -> None:
    def f(payload):  # type: ignore[no-untyped-def]
        pass

    (decoded,), _ = roundtrip(build_schema(f, "t.any"), SPECIAL_VALUES)

    assert decoded == SPECIAL_VALUES
    assert {k: type(v) for k, v in decoded.items()} == {
        k: type(v) for k, v in SPECIAL_VALUES.items()
    }


def test_encode_any_and_decode_any_round_trip_special_types() -> None:
    wire = over_the_wire(encode_any(SPECIAL_VALUES))

    assert wire["uuid"] == {"__tf__": "uuid", "v": str(UUID(int=42))}
    assert decode_any(wire) == SPECIAL_VALUES


def test_user_dict_containing_the_tag_key_is_not_mistaken_for_a_tagged_value() -> None:
    value = {"__tf__": "datetime", "v": "2024-01-01"}

    assert decode_any(over_the_wire(encode_any(value))) == value


def test_unannotated_dataclass_is_sent_as_a_plain_dict_and_decodes_as_dict() -> None:
    wire = encode_any(LineItem("a", 2))

    assert wire == {"sku": "a", "qty": 2}
    assert decode_any(wire) == {"sku": "a", "qty": 2}


def test_unannotated_enum_is_sent_as_its_value() -> None:
    assert encode_any([Color.RED, Priority.LOW]) == ["red", 1]


def test_unannotated_arbitrary_object_is_rejected_as_not_json_serializable() -> None:
    def f(thing):  # type: ignore[no-untyped-def]
        pass

    with pytest.raises(PayloadError) as info:
        build_schema(f, "t.obj").encode_args(([1, Opaque()],), {})

    assert str(info.value) == "t.obj(thing[1]): Opaque object is not JSON-serializable"


def test_unannotated_dict_with_non_string_keys_is_rejected() -> None:
    with pytest.raises(PayloadError, match=r"value\[<key>\]: dict keys must be str, got int"):
        encode_any({1: "a"})


def test_decode_any_rejects_an_unknown_tag() -> None:
    with pytest.raises(PayloadError, match="unknown __tf__ tag"):
        decode_any({"__tf__": "pickle", "v": "..."})


# --------------------------------------------------------------------------- pydantic


def test_pydantic_model_round_trips_and_accepts_a_dict_at_encode() -> None:
    pydantic = pytest.importorskip("pydantic")

    class User(pydantic.BaseModel):  # type: ignore[misc, name-defined]
        name: str
        joined: date

    schema = schema_for(User)
    user = User(name="ann", joined=date(2020, 1, 1))

    (decoded,), _ = roundtrip(schema, user)
    wire, _ = schema.encode_args(({"name": "bob", "joined": "2021-02-03"},), {})

    assert decoded == user
    assert wire == [{"name": "bob", "joined": "2021-02-03"}]


def test_pydantic_validation_error_becomes_a_payload_error_naming_task_and_parameter() -> None:
    pydantic = pytest.importorskip("pydantic")

    class User(pydantic.BaseModel):  # type: ignore[misc, name-defined]
        name: str
        age: int

    def register(user: User) -> None:
        pass

    schema = build_schema(register, "acct.register")

    with pytest.raises(PayloadError, match=r"acct\.register\(user\): invalid User: age: "):
        schema.encode_args(({"name": "x", "age": "old"},), {})
    with pytest.raises(PayloadError, match=r"acct\.register\(user\): invalid User"):
        schema.decode_args([{"name": "x"}], {})


# --------------------------------------------------------------------------- protobuf


def test_protobuf_message_round_trips_in_its_tagged_wire_form() -> None:
    struct_pb2 = pytest.importorskip("google.protobuf.struct_pb2")
    message = struct_pb2.Struct()
    message.update({"a": 1.0, "b": ["x", True]})
    schema = schema_for(struct_pb2.Struct)

    wire, _ = schema.encode_args((message,), {})
    (decoded,), _ = schema.decode_args(over_the_wire(wire), {})

    assert wire[0]["__tf__"] == "protobuf"
    assert wire[0]["type"] == "google.protobuf.Struct"
    assert decoded == message


def test_protobuf_decoding_rejects_a_different_message_type() -> None:
    timestamp_pb2 = pytest.importorskip("google.protobuf.timestamp_pb2")
    wrappers_pb2 = pytest.importorskip("google.protobuf.wrappers_pb2")
    wire = encode_any(wrappers_pb2.Int64Value(value=5))

    with pytest.raises(PayloadError) as info:
        schema_for(timestamp_pb2.Timestamp).decode_args([wire], {})

    assert str(info.value) == (
        "t.rt(value): expected google.protobuf.Timestamp, got google.protobuf.Int64Value"
    )


def test_protobuf_decoding_rejects_unparseable_bytes() -> None:
    timestamp_pb2 = pytest.importorskip("google.protobuf.timestamp_pb2")
    wire = {"__tf__": "protobuf", "type": "google.protobuf.Timestamp", "v": "//8="}

    with pytest.raises(PayloadError, match="could not parse google.protobuf.Timestamp"):
        schema_for(timestamp_pb2.Timestamp).decode_args([wire], {})


def test_protobuf_parameter_rejects_another_message_type_at_encode() -> None:
    timestamp_pb2 = pytest.importorskip("google.protobuf.timestamp_pb2")
    wrappers_pb2 = pytest.importorskip("google.protobuf.wrappers_pb2")

    with pytest.raises(PayloadError, match="expected google.protobuf.Timestamp"):
        schema_for(timestamp_pb2.Timestamp).encode_args((wrappers_pb2.Int64Value(),), {})


def test_unannotated_protobuf_message_decodes_through_the_descriptor_pool() -> None:
    timestamp_pb2 = pytest.importorskip("google.protobuf.timestamp_pb2")
    message = timestamp_pb2.Timestamp(seconds=10, nanos=5)

    assert decode_any(over_the_wire(encode_any(message))) == message


# --------------------------------------------------------------------------- build time


def test_arbitrary_class_annotation_is_rejected_at_build_time() -> None:
    def f(x: int, thing: Opaque) -> None:
        pass

    with pytest.raises(PayloadError, match=r"t\.bad\(thing\): unsupported annotation Opaque"):
        build_schema(f, "t.bad")


def test_unsupported_annotation_inside_a_dataclass_names_the_field() -> None:
    @dataclasses.dataclass
    class Holder:
        thing: Opaque

    with pytest.raises(PayloadError, match=r"annotation Opaque \(field Holder\.thing\)"):
        schema_for(Holder)


def test_callable_annotation_is_rejected_at_build_time() -> None:
    with pytest.raises(PayloadError, match="unsupported annotation"):
        schema_for(typing.Callable[[int], int])


def test_dict_with_float_keys_is_rejected_at_build_time() -> None:
    with pytest.raises(PayloadError, match="dict keys must be str-like or int-like"):
        schema_for(dict[float, int])


def test_unsupported_return_annotation_is_rejected_at_build_time() -> None:
    def f() -> Opaque:
        return Opaque()

    with pytest.raises(PayloadError, match=r"t\.ret\(return\): unsupported annotation"):
        build_schema(f, "t.ret")


def test_unresolvable_forward_reference_is_treated_as_any() -> None:
    def f(x, y):  # type: ignore[no-untyped-def]
        pass

    f.__annotations__ = {"x": "NoSuchTypeAnywhere", "y": "int"}
    schema = build_schema(f, "t.fwd")

    assert roundtrip(schema, (1, 2), 3) == (((1, 2), 3), {})
    with pytest.raises(PayloadError, match=r"t\.fwd\(y\): expected int"):
        schema.encode_args((None, "3"), {})


def test_schema_is_built_once_and_encoding_never_inspects_annotations_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def place(order: Order, when: datetime | None = None) -> list[LineItem]:
        return order.items

    schema = build_schema(place, "shop.place")

    def forbidden(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("annotations inspected on the hot path")

    monkeypatch.setattr(typing, "get_type_hints", forbidden)
    monkeypatch.setattr(inspect, "signature", forbidden)

    order = Order(UUID(int=1), [LineItem("a", 1)])
    assert roundtrip(schema, order, when=AWARE) == ((order,), {"when": AWARE})
    assert schema.decode_result(over_the_wire(schema.encode_result(order.items))) == order.items


# --------------------------------------------------------------------------- no values in errors

SECRET = "sk_live_TOPSECRET"


@dataclasses.dataclass
class Card:
    number: str
    cvc: int

    def __post_init__(self) -> None:
        if not self.number.isdigit():
            raise ValueError(f"card number {self.number} is not numeric")


class Tier(enum.Enum):
    GOLD = "gold"


class Account(TypedDict):
    token: int


class Pair(NamedTuple):
    left: int
    right: int


SECRET_CASES: list[tuple[Any, Any]] = [
    # (annotation, wire value the worker receives)
    (int, SECRET),
    (float, SECRET),
    (bool, SECRET),
    (str, [SECRET]),
    (bytes, SECRET + "!"),
    (bytes, SECRET + "é"),
    (datetime, SECRET),
    (date, {"__tf__": "date", "v": SECRET}),
    (time, SECRET),
    (timedelta, SECRET),
    (UUID, SECRET),
    (Decimal, SECRET + "x"),
    (Tier, SECRET),
    (Literal["a", "b"], SECRET),
    (list[int], [1, SECRET]),
    (tuple[int, str], [SECRET]),
    (set[int], [SECRET]),
    (dict[str, int], {SECRET: SECRET}),
    (dict[int, str], {SECRET: "x"}),
    (Mapping[UUID, int], {SECRET: 1}),
    (LineItem, {"sku": "a", "qty": SECRET}),
    (LineItem, {"sku": "a", "qty": 1, SECRET: 1}),
    (Card, {"number": SECRET, "cvc": 1}),
    (Account, {"token": SECRET}),
    (Account, {SECRET: 1}),
    (Pair, [SECRET, 1]),
    (int | None, SECRET),
    (int | UUID, SECRET),
    (Any, {"__tf__": "datetime", "v": SECRET}),
    (Any, {"__tf__": SECRET, "v": 1}),
    (Any, {"__tf__": "decimal", "v": SECRET + "x"}),
    (Any, {"__tf__": "bytes", "v": SECRET + "é"}),
    (Any, {"__tf__": "protobuf", "type": "google.protobuf.Timestamp", "v": SECRET + "é"}),
]


@pytest.mark.parametrize(("annotation", "wire"), SECRET_CASES)
def test_a_decoding_error_names_the_type_never_the_value(annotation: Any, wire: Any) -> None:
    with pytest.raises(PayloadError) as info:
        schema_for(annotation).decode_args([wire], {})
    assert SECRET not in str(info.value)
    assert str(info.value).startswith("t.rt(value")


@pytest.mark.parametrize(
    "value",
    [
        SECRET,
        [SECRET],
        {SECRET: object()},
        {5: SECRET},
        LineItem(SECRET, SECRET),  # type: ignore[arg-type]
    ],
)
def test_an_encoding_error_names_the_type_never_the_value(value: Any) -> None:
    for annotation in (int, list[int], LineItem, dict[str, int], Any):
        try:
            schema_for(annotation).encode_args((value,), {})
        except PayloadError as exc:
            assert SECRET not in str(exc)
    with pytest.raises(PayloadError) as info:
        encode_any({"ok": [1, {SECRET: object()}]})
    assert SECRET not in str(info.value)
    assert str(info.value) == "value[<key>][1][<key>]: object object is not JSON-serializable"


def test_protobuf_errors_never_quote_the_value() -> None:
    timestamp_pb2 = pytest.importorskip("google.protobuf.timestamp_pb2")
    schema = schema_for(timestamp_pb2.Timestamp)
    for wire in (
        {"__tf__": "protobuf", "type": "google.protobuf.Timestamp", "v": SECRET + "é"},
        {"__tf__": "protobuf", "type": f"{SECRET} x", "v": ""},
        {"seconds": SECRET},  # the proto3 JSON mapping, with a value of the wrong type
        {SECRET: 1},
        SECRET,
    ):
        with pytest.raises(PayloadError) as info:
            schema.decode_args([wire], {})
        assert SECRET not in str(info.value)


def test_pydantic_errors_say_where_and_why_never_the_value() -> None:
    pydantic = pytest.importorskip("pydantic")

    class Login(pydantic.BaseModel):  # type: ignore[misc, name-defined]
        user: str
        pin: int
        scores: dict[str, int] = {}

        @pydantic.field_validator("user")  # type: ignore[misc]
        @classmethod
        def no_spaces(cls, value: str) -> str:
            if " " in value:
                raise ValueError(f"user {value!r} has spaces")
            return value

    schema = schema_for(Login, "acct.login")
    for wire in (
        {"user": "a", "pin": SECRET},
        {"user": f"{SECRET} x", "pin": 1},
        {"user": "a", "pin": 1, "scores": {SECRET: SECRET}},
    ):
        with pytest.raises(PayloadError, match=r"acct\.login\(value\): invalid Login") as info:
            schema.decode_args([wire], {})
        assert SECRET not in str(info.value)
    with pytest.raises(PayloadError, match=r"pin: Input should be a valid integer"):
        schema.decode_args([{"user": "a", "pin": SECRET}], {})


def test_nesting_deeper_than_the_stack_is_a_payload_error_not_a_recursion_error() -> None:
    deep: Any = 1
    for _ in range(400):
        deep = {"k": [deep]}
    with pytest.raises(PayloadError, match=r"t\.rt\(value\): nested too deeply"):
        schema_for(Any).decode_args([deep], {})
    with pytest.raises(PayloadError, match=r"t\.rt\(value\): nested too deeply"):
        schema_for(Any).encode_args((deep,), {})
    with pytest.raises(PayloadError, match="nested too deeply"):
        decode_any(deep)
    with pytest.raises(PayloadError, match=r"t\.rt\(value\): nested too deeply"):
        schema_for(TreeNode).decode_args([_tree(400)], {})


def _tree(depth: int) -> dict[str, Any]:
    node: dict[str, Any] = {"label": "leaf", "children": []}
    for _ in range(depth):
        node = {"label": "n", "children": [node]}
    return node


def test_an_integer_beyond_64_bits_names_the_argument_that_holds_it() -> None:
    # It said "envelope is not JSON-serializable", naming no argument.
    from taskflow import App

    big = 2**70
    with App("big-ints") as app:

        @app.task(name="t.n")
        def n(x: int, y: Any = None) -> None: ...

        with pytest.raises(PayloadError) as first:
            n.delay(big)
        with pytest.raises(PayloadError) as keyword:
            n.delay(1, y=[1, {"deep": big}])
        with pytest.raises(PayloadError) as by_name:
            app.send_task("t.other", (1, big))
    assert str(first.value) == (
        "t.n(argument 1): not JSON-serializable: Integer exceeds 64-bit range "
        "(send a larger integer as a str)"
    )
    assert str(keyword.value).startswith("t.n(y): not JSON-serializable")
    assert str(by_name.value).startswith("t.other(argument 2): not JSON-serializable")
    assert str(big) not in str(first.value) + str(keyword.value) + str(by_name.value)
