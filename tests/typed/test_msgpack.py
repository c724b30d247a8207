"""msgpack as an optional payload serializer: ``@app.task(serializer="msgpack")``."""

from __future__ import annotations

import base64
import dataclasses
import json
from datetime import date

import msgpack
import pytest

from taskflow import App
from taskflow.codec import MSGPACK, EnvelopeError, decode_envelope, encode_envelope
from taskflow.message import Envelope
from tests.typed.helpers import dead_letters, publish_raw


@dataclasses.dataclass
class Reading:
    sensor: str
    day: date
    values: list[float]


def test_a_msgpack_task_round_trips_through_a_worker(app: App) -> None:
    @app.task(name="iot.mean", serializer="msgpack")
    def mean(reading: Reading, scale: float = 1.0) -> dict[str, float]:
        return {reading.sensor: scale * sum(reading.values) / len(reading.values)}

    result = mean.delay(Reading("t1", date(2024, 5, 1), [1.0, 2.0, 4.5]), scale=2.0)
    assert app.worker().run_until_idle() == 1
    assert result.get(timeout=5) == {"t1": 5.0}


def test_the_msgpack_envelope_stays_json_with_a_base64_payload_field() -> None:
    env = Envelope(
        id="m1",
        task="iot.mean",
        queue="q",
        args=[1, "x"],
        kwargs={"k": [True]},
        content_type=MSGPACK,
    )
    doc = json.loads(encode_envelope(env))
    assert "args" not in doc and "kwargs" not in doc
    assert doc["content_type"] == "application/x-msgpack"
    assert msgpack.unpackb(base64.b64decode(doc["payload"])) == [[1, "x"], {"k": [True]}]
    assert decode_envelope(encode_envelope(env)) == env


def test_a_producer_can_build_a_msgpack_envelope_with_plain_libraries(app: App) -> None:
    @app.task(name="iot.scale")
    def scale(values: list[int], by: int) -> list[int]:
        return [v * by for v in values]

    payload = base64.b64encode(msgpack.packb([[[1, 2, 3]], {"by": 3}])).decode()
    body = json.dumps(
        {
            "v": 1,
            "id": "mp-1",
            "task": "iot.scale",
            "queue": "default",
            "content_type": "application/x-msgpack",
            "payload": payload,
        }
    )
    publish_raw(app, "mp-1", body.encode())
    app.worker().run_until_idle()
    assert app.result("mp-1").get(timeout=5) == [3, 6, 9]


def test_a_corrupt_msgpack_payload_is_dead_lettered_as_undecodable(app: App) -> None:
    body = json.dumps(
        {
            "v": 1,
            "id": "mp-bad",
            "task": "iot.scale",
            "queue": "default",
            "content_type": "application/x-msgpack",
            "payload": base64.b64encode(b"\xc1").decode(),
        }
    )
    publish_raw(app, "mp-bad", body.encode())
    app.worker().run_until_idle()
    [letter] = dead_letters(app)
    assert letter.reason == "undecodable" and "msgpack" in (letter.error or "")


@pytest.mark.parametrize(
    "doc",
    [
        {"payload": "AA=="},  # no msgpack content type
        {"payload": "not base64!", "content_type": MSGPACK},
        {"payload": base64.b64encode(msgpack.packb([1])).decode(), "content_type": MSGPACK},
        {"payload": "kZA=", "content_type": MSGPACK, "args": []},  # payload and args both
    ],
)
def test_malformed_msgpack_envelopes_raise_envelope_error(doc: dict[str, str]) -> None:
    with pytest.raises(EnvelopeError):
        decode_envelope(json.dumps({"v": 1, "id": "a", "task": "t", "queue": "q", **doc}).encode())


def test_an_unknown_serializer_is_refused_at_the_decorator(app: App) -> None:
    with pytest.raises(ValueError, match="serializer must be one of"):
        app.task(name="x.y", serializer="pickle")
