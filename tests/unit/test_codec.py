"""The envelope codec: a lossless JSON wire form that rejects anything malformed."""

from __future__ import annotations

import orjson
import pytest

from taskflow import Envelope, PayloadError
from taskflow.codec import EnvelopeError, decode_envelope, encode_envelope
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


def test_next_attempt_is_a_copy_and_the_original_is_untouched() -> None:
    env = full_envelope()
    nxt = env.next_attempt(eta=99.0)
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
