"""The envelope codec: a lossless JSON wire form that rejects anything malformed."""

from __future__ import annotations

import base64
import dataclasses
import inspect

import orjson
import pytest

from taskflow import Envelope, PayloadError, TaskStatus
from taskflow.codec import MAX_DEPTH, EnvelopeError, decode_envelope, encode_envelope
from taskflow.message import PROTOCOL_VERSION


def full_envelope() -> Envelope:
    return Envelope(
        id="t-1",
        task="shop.add",
        queue="q",
        args=[1, {"a": [2]}],
        kwargs={"k": "v"},
        priority=7,
        created_at=1.5,
        eta=10.0,
        expires=20.0,
        attempt=2,
        max_retries=3,
        timeout=30.0,
        idempotency_key="key",
        correlation_id="c",
        parent_id="p",
        root_id="r",
        headers={"h": "1"},
        canvas={"chain": []},
        content_type="application/x-test",
    )


def test_every_envelope_field_survives_a_round_trip() -> None:
    env = full_envelope()
    assert decode_envelope(encode_envelope(env)) == env


def test_a_minimal_envelope_omits_optional_fields_on_the_wire() -> None:
    env = Envelope(id="t", task="x", queue="default")
    doc = orjson.loads(encode_envelope(env))
    assert {
        "v": PROTOCOL_VERSION,
        "id": "t",
        "task": "x",
        "queue": "default",
    }.items() <= doc.items()
    assert (
        not {
            "eta",
            "expires",
            "timeout",
            "idempotency_key",
            "correlation_id",
            "parent_id",
            "root_id",
            "canvas",
            "headers",
            "content_type",
        }
        & doc.keys()
    )
    assert decode_envelope(encode_envelope(env)) == env


def test_replace_is_a_copy_and_the_original_is_untouched() -> None:
    env = full_envelope()
    nxt = env.replace(attempt=env.attempt + 1, eta=99.0)  # what a retry publishes
    assert (nxt.attempt, nxt.eta) == (3, 99.0)
    assert (env.attempt, env.eta) == (2, 10.0)


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[1, 2]",
        b'{"v": 99, "id": "a", "task": "t", "queue": "q"}',
        b'{"v": 1, "task": "t", "queue": "q"}',
        b'{"v": 1, "id": 5, "task": "t", "queue": "q"}',
        b'{"v": 1, "id": "a", "task": "t", "queue": "q", "args": {}}',
        b'{"v": 1, "id": "a", "task": "t", "queue": "q", "priority": 12}',
        b'{"v": 1, "id": "a", "task": "t", "queue": "q", "priority": true}',
        b'{"v": 1, "id": "a", "task": "t", "queue": "q", "attempt": "x"}',
        b'{"v": 1, "id": "a", "task": "t", "queue": "q", "eta": "soon"}',
        b'{"v": 1, "id": "a", "task": "t", "queue": "q", "headers": 5}',
    ],
)
def test_malformed_bytes_raise_envelope_error(body: bytes) -> None:
    with pytest.raises(EnvelopeError):
        decode_envelope(body)


def test_envelope_error_is_a_payload_error() -> None:
    assert issubclass(EnvelopeError, PayloadError)


def test_an_unserializable_payload_is_a_payload_error_naming_the_task() -> None:
    env = Envelope(id="t", task="shop.add", queue="q", args=[object()])
    with pytest.raises(PayloadError, match="shop.add"):
        encode_envelope(env)


# -- exactly what docs/protocol.md section 2 allows ---------------------------------------
BASE = '"id": "a", "task": "t", "queue": "q"'


@pytest.mark.parametrize(
    ("fields", "names"),
    [
        ('"v": true', "version"),
        ('"v": 1.0', "version"),
        ('"v": "1"', "version"),
        ('"v": 1, "attempt": 0', "'attempt'"),
        ('"v": 1, "attempt": -3', "'attempt'"),
        ('"v": 1, "attempt": true', "'attempt'"),
        ('"v": 1, "attempt": 9223372036854775807', "'attempt'"),  # no next attempt fits
        ('"v": 1, "max_retries": -1', "'max_retries'"),
        ('"v": 1, "max_retries": false', "'max_retries'"),
        ('"v": 1, "max_retries": 2.0', "'max_retries'"),
        ('"v": 1, "priority": 1.5', "'priority'"),
        ('"v": 1, "timeout": "nan"', "'timeout'"),
        ('"v": 1, "timeout": "30"', "'timeout'"),
        ('"v": 1, "timeout": 0', "'timeout'"),
        ('"v": 1, "timeout": -1.5', "'timeout'"),
        ('"v": 1, "timeout": true', "'timeout'"),
        ('"v": 1, "eta": "nan"', "'eta'"),
        ('"v": 1, "expires": "inf"', "'expires'"),
        ('"v": 1, "expires": 1e999', "not valid JSON"),  # orjson refuses infinity
        ('"v": 1, "created_at": "now"', "'created_at'"),
        ('"v": 1, "created_at": null', "'created_at'"),
        ('"v": 1, "canvas": 7', "'canvas'"),
        ('"v": 1, "canvas": []', "'canvas'"),
        ('"v": 1, "headers": {"h": 1}', "'headers'"),
        ('"v": 1, "headers": null', "'headers'"),
        ('"v": 1, "idempotency_key": 5', "'idempotency_key'"),
        ('"v": 1, "parent_id": {}', "'parent_id'"),
        ('"v": 1, "content_type": 5', "'content_type'"),
        ('"v": 1, "kwargs": null', "kwargs"),
    ],
)
def test_a_field_outside_the_protocol_is_undecodable_and_named(fields: str, names: str) -> None:
    with pytest.raises(EnvelopeError, match=names):
        decode_envelope(f"{{{fields}, {BASE}}}".encode())


@pytest.mark.parametrize(
    "doc",
    [
        {"v": 1, "id": "", "task": "t", "queue": "q"},
        {"v": 1, "id": "a", "task": "", "queue": "q"},
        {"v": 1, "id": "a", "task": "t", "queue": "two words"},
    ],
)
def test_empty_names_and_a_queue_with_whitespace_are_undecodable(doc: dict[str, object]) -> None:
    with pytest.raises(EnvelopeError):
        decode_envelope(orjson.dumps(doc))


@pytest.mark.parametrize("field", ["id", "task", "queue"])
@pytest.mark.parametrize("text", ["a\nb", "a\rb", "a\x1b[31mb", "a\x00b", "a\u2028b"])
def test_an_id_or_name_with_a_control_character_is_undecodable_and_not_quoted(
    field: str, text: str
) -> None:
    # A newline in an id would forge a worker's log line; NATS cannot carry it in a header.
    doc = {"v": 1, "id": "a", "task": "t", "queue": "q", field: text}
    with pytest.raises(EnvelopeError, match=f"'{field}' must be printable") as info:
        decode_envelope(orjson.dumps(doc))
    assert text not in str(info.value)


def test_ids_and_names_may_hold_any_printable_text() -> None:
    doc = {"v": 1, "id": "order 42/ä.*>", "task": "shop.send mail", "queue": "emails.ä/*>"}
    env = decode_envelope(orjson.dumps(doc))
    assert (env.id, env.task, env.queue) == (doc["id"], doc["task"], doc["queue"])


def test_the_documented_ranges_decode() -> None:
    body = (
        f'{{"v": 1, {BASE}, "attempt": 9223372036854775806, "max_retries": 9223372036854775807,'
        ' "priority": 9, "timeout": 0.001, "eta": -5, "expires": 1e300, "created_at": 3,'
        ' "canvas": null, "headers": {}, "idempotency_key": null}'
    ).encode()
    env = decode_envelope(body)
    assert (env.attempt, env.priority, env.timeout, env.eta) == (2**63 - 2, 9, 0.001, -5.0)
    assert decode_envelope(encode_envelope(env)) == env  # a decoded envelope re-encodes


def test_arguments_nest_at_most_max_depth_levels() -> None:
    def nested(depth: int) -> object:
        value: object = 1
        for _ in range(depth):
            value = [value]
        return value

    ok = orjson.dumps({"v": 1, "id": "a", "task": "t", "queue": "q", "args": [nested(MAX_DEPTH)]})
    assert decode_envelope(ok).args == [nested(MAX_DEPTH)]
    for depth in (MAX_DEPTH + 1, 400, 1000):
        value = b"[" * depth + b"1" + b"]" * depth  # orjson would not write this deep
        deep = b'{"v": 1, "id": "a", "task": "t", "queue": "q", "kwargs": {"x": %s}}' % value
        with pytest.raises(EnvelopeError, match="nests deeper than 64 levels"):
            decode_envelope(deep)


def test_bad_base64_in_a_msgpack_payload_is_undecodable_even_with_non_ascii_text() -> None:
    for payload in ["not base64!", "ünïcode", 5]:
        body = orjson.dumps(
            {"v": 1, "id": "a", "task": "t", "queue": "q", "payload": payload}
            | {"content_type": "application/x-msgpack"}
        )
        with pytest.raises(EnvelopeError, match="payload"):
            decode_envelope(body)


@pytest.mark.parametrize(
    "unpacked",
    [
        [[b"raw bytes"], {}],
        [[float("nan")], {}],
        [[], {1: "non-string key"}],
        [[{"k": {2: "nested non-string key"}}], {}],
    ],
)
def test_a_msgpack_payload_must_hold_json_values_only(unpacked: list[object]) -> None:
    msgpack = pytest.importorskip("msgpack")
    packed = base64.b64encode(msgpack.packb(unpacked, strict_types=False)).decode()
    body = orjson.dumps(
        {"v": 1, "id": "a", "task": "t", "queue": "q", "payload": packed}
        | {"content_type": "application/x-msgpack"}
    )
    with pytest.raises(EnvelopeError, match="only JSON values|not valid msgpack"):
        decode_envelope(body)


def test_an_envelope_error_names_types_never_argument_values() -> None:
    body = b'{"v": 1, "id": "a", "task": "t", "queue": "q", "headers": {"h": ["s3cret"]}}'
    with pytest.raises(EnvelopeError) as info:
        decode_envelope(body)
    assert "s3cret" not in str(info.value)


def test_the_envelope_constructor_takes_every_field_with_its_default() -> None:
    params = list(inspect.signature(Envelope.__init__).parameters.values())[1:]
    declared = dataclasses.fields(Envelope)
    assert [p.name for p in params] == [f.name for f in declared]
    minimal = Envelope("t", "x", "q")
    for f in declared[3:]:
        default = f.default_factory() if callable(f.default_factory) else f.default
        assert getattr(minimal, f.name) == default, f.name
    # every field by position too, as the dataclass constructor took them
    env = full_envelope()
    assert Envelope(*(getattr(env, f.name) for f in declared)) == env
    # mutable defaults are not shared between envelopes
    assert Envelope("a", "x", "q").headers is not Envelope("b", "x", "q").headers


def test_an_envelope_is_frozen_and_replace_makes_a_changed_copy() -> None:
    env = full_envelope()
    with pytest.raises(dataclasses.FrozenInstanceError):
        env.attempt = 3  # type: ignore[misc]
    nxt = env.replace(attempt=3, eta=None)
    assert (nxt.attempt, nxt.eta, env.attempt, env.eta) == (3, None, 2, 10.0)
    assert nxt.replace(attempt=2, eta=10.0) == env


@pytest.mark.parametrize(
    "extra",
    [{}, {"x_future_field": [1, 2]}],  # an unknown field (protocol.md section 2: ignored)
)
def test_a_decoded_envelope_holds_exactly_what_the_constructor_would(
    extra: dict[str, object],
) -> None:
    declared = [f.name for f in dataclasses.fields(Envelope)]
    for env in (Envelope("t", "x", "q"), full_envelope()):
        doc = {**orjson.loads(encode_envelope(env)), **extra}
        decoded = decode_envelope(orjson.dumps(doc))
        assert decoded == env
        # the same fields in the same order, and nothing else (an unknown one is dropped)
        assert list(vars(decoded)) == list(vars(env)) == declared
        with pytest.raises(dataclasses.FrozenInstanceError):
            decoded.attempt = 5  # type: ignore[misc]


def test_decoded_times_are_floats_and_absent_containers_are_never_shared() -> None:
    body = f'{{"v": 1, {BASE}, "created_at": 3, "eta": 4, "expires": 5, "timeout": 6}}'.encode()
    env = decode_envelope(body)
    times = (env.created_at, env.eta, env.expires, env.timeout)
    assert times == (3.0, 4.0, 5.0, 6.0)
    assert all(type(t) is float for t in times)
    bare = f'{{"v": 1, {BASE}}}'.encode()
    one, two = decode_envelope(bare), decode_envelope(bare)
    assert (one.args, one.kwargs, one.headers, one.created_at) == ([], {}, {}, 0.0)
    assert one.args is not two.args
    assert one.kwargs is not two.kwargs
    assert one.headers is not two.headers
    headers = {"h": "1"}
    doc = {"v": 1, "id": "a", "task": "t", "queue": "q", "headers": headers}
    assert decode_envelope(orjson.dumps(doc)).headers == headers


def test_exactly_the_four_final_statuses_are_terminal() -> None:
    assert {s.value for s in TaskStatus if s.terminal} == {
        "succeeded",
        "failed",
        "cancelled",
        "expired",
    }
    assert not TaskStatus("running").terminal and TaskStatus("failed").terminal
