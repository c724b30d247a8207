"""Parts of the NATS broker that need no server: the local lease fence and its lease ends,
the numbers read from a pulled message's ack subject, publishes without a timer, and which
failed sends of a replay are sent again."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import nats.errors
import pytest
from nats.aio.msg import Msg
from nats.errors import ConnectionClosedError
from nats.js.api import PubAck
from nats.js.errors import APIError, NoStreamResponseError, ServiceUnavailableError

from taskflow._nats import connection as nats_connection
from taskflow._nats.connection import Connection
from taskflow._nats.framing import delivery_numbers
from taskflow.brokers import _nats_admin as nats_admin
from taskflow.brokers._nats_admin import NatsAdmin
from taskflow.brokers._nats_core import NatsCore
from taskflow.errors import BrokerError
from taskflow.results._nats_janitor import sweep


def _core() -> NatsCore:
    conn = Connection("nats://127.0.0.1:4222", role="broker", owner="t", connect_timeout=1.0)
    return NatsCore(conn, "t", 30.0)


def test_a_settled_lease_neither_wakes_a_fetch_nor_forces_a_rescan() -> None:
    core = _core()
    settled = core.lease_out(7, 30.0)
    held = core.lease_out(8, 60.0)
    assert core.lease_held(7, settled, release=True)
    now = time.monotonic()
    core.signals.rescan = False
    # The settled lease's end is skipped: the next end is the one still held.
    assert core.next_lease_end(now) == pytest.approx(now + 60.0, abs=1.0)
    assert core.next_lease_end(now + 45.0) is not None
    assert core.signals.rescan is False
    # A lease still held that ran out does make the next fetch rescan.
    assert core.next_lease_end(now + 61.0) is None
    assert core.signals.rescan is True
    assert core.lease_held(8, held, release=False)


def _pulled(reply: str) -> Msg:
    return Msg(None, subject="t.q.default.p0.id", reply=reply, data=b"x")  # type: ignore[arg-type]


def test_delivery_numbers_read_the_ack_subject_as_metadata_does() -> None:
    for reply in (
        "$JS.ACK.TF_T_WORK.default_p0.3.1042.998.1764612345000000000.17",
        "$JS.ACK.hub.ACCHASH.TF_T_WORK.default_p0.3.1042.998.1764612345000000000.17.tok",
    ):
        msg = _pulled(reply)
        assert delivery_numbers(msg) == (3, 1042)
        assert delivery_numbers(msg) == (msg.metadata.num_delivered, msg.metadata.sequence.stream)


class _Client:
    """Just enough of nats-py's client for Connection.publish."""

    def __init__(self, pending: int, error: Exception | None = None) -> None:
        self.pending_data_size = pending
        self.error = error
        self.sent: list[tuple[str, bytes, str]] = []

    async def publish(self, subject: str, payload: bytes = b"", reply: str = "") -> None:
        if self.error is not None:
            raise self.error
        self.sent.append((subject, payload, reply))


def _connected(client: _Client) -> Connection:
    conn = Connection("nats://127.0.0.1:4222", role="broker", owner="t", connect_timeout=1.0)
    conn._nc = client  # type: ignore[assignment]
    return conn


def test_publish_arms_no_timer_while_the_client_buffer_has_room(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    timed: list[Any] = []
    real_timeout = asyncio.timeout

    def counting_timeout(delay: float | None) -> Any:
        timed.append(delay)
        return real_timeout(delay)

    monkeypatch.setattr(asyncio, "timeout", counting_timeout)
    roomy, full = _Client(0), _Client(nats_connection.PENDING_SIZE)

    async def body() -> None:
        await _connected(roomy).publish("ack.1")
        assert timed == []  # buffered at once: no deadline needed
        await _connected(full).publish("ack.2", b"x", reply="r")
        assert timed == [nats_connection.API_TIMEOUT]  # waits for the flusher, bounded
        with pytest.raises(BrokerError, match="ConnectionError: gone"):
            await _connected(_Client(0, ConnectionError("gone"))).publish("ack.3")

    asyncio.run(body())
    assert roomy.sent == [("ack.1", b"", "")]
    assert full.sent == [("ack.2", b"x", "r")]


def test_a_close_step_gives_up_at_its_deadline_even_when_the_step_holds_on() -> None:
    # nats-py's drain catches the cancellation of its wait and carries on: a plain
    # timeout (``within``) would wait for it; closing must not.
    release = asyncio.Event()

    async def holds_on() -> None:
        try:
            await release.wait()
        except asyncio.CancelledError:
            await release.wait()  # swallows the cancellation, as nats-py's drain does

    async def quick() -> None:
        raise RuntimeError("closed already")  # an error is no reason to wait

    async def main() -> tuple[bool, bool, float]:
        started = time.monotonic()
        gave_up = await nats_connection._bounded(holds_on(), 0.05)
        took = time.monotonic() - started
        finished = await nats_connection._bounded(quick(), 5.0)
        release.set()  # let the step left behind end with the test
        return gave_up, finished, took

    gave_up, finished, took = asyncio.run(main())
    assert gave_up is False and took < 1.0
    assert finished is True


@pytest.mark.parametrize(
    ("error", "sends"),
    [
        (nats.errors.TimeoutError(), 2),  # no answer: it may have been stored, send again
        (ServiceUnavailableError(code=503), 2),  # no stream leader to answer yet
        (NoStreamResponseError(), 2),  # JetStream not listening (a server starting)
        (APIError(code=400, description="bad"), 1),  # an answer: not stored
        (ConnectionClosedError(), 1),  # this client closed: no later send can go
    ],
)
def test_a_replay_send_is_sent_again_only_when_the_server_gave_no_answer(
    error: Exception, sends: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(nats_admin, "_RESEND_PAUSE", 0.0)
    admin = NatsAdmin(_core())
    calls: list[int] = []

    async def publish() -> PubAck:
        calls.append(1)
        if len(calls) == 1:
            raise error
        # The first send may have been stored: the server says the second duplicates it.
        return PubAck(stream="s", seq=1, duplicate=True)

    if sends == 1:
        with pytest.raises(BrokerError):
            asyncio.run(admin._resend(publish))
    else:
        assert asyncio.run(admin._resend(publish)) is True  # this call's own send
    assert len(calls) == sends


@pytest.mark.parametrize("duplicate", [None, False, True])
def test_a_replay_send_answered_at_once_as_a_duplicate_was_sent_by_an_earlier_call(
    duplicate: bool | None,
) -> None:
    admin = NatsAdmin(_core())

    async def publish() -> PubAck:
        return PubAck(stream="s", seq=1, duplicate=duplicate)

    assert asyncio.run(admin._resend(publish)) is (duplicate is not True)


class _Entry:
    def __init__(self, key: str, value: dict[str, Any] | None, revision: int, delta: int) -> None:
        self.key = key
        self.value = b"" if value is None else json.dumps(value).encode()
        self.revision = revision
        self.delta = delta
        self.operation = "DEL" if value is None else None


class _Bucket:
    """A KV bucket whose watcher hands out ``updates`` in order (None: the end marker)."""

    def __init__(self, updates: list[_Entry | None]) -> None:
        self._updates = list(updates)
        self.watched = self.stopped = False

    async def watch(self, keys: str) -> _Bucket:
        self.watched = True
        return self

    async def updates(self, timeout: float | None = None) -> _Entry | None:
        if not self._updates:
            raise nats.errors.TimeoutError
        return self._updates.pop(0)

    async def stop(self) -> None:
        self.stopped = True


class _BucketConn:
    """The calls the janitor's sweep makes: the stream's state, and purges."""

    masked = "nats://127.0.0.1:4222"

    def __init__(self, messages: int, last_seq: int) -> None:
        self.state = {"messages": messages, "last_seq": last_seq}
        self.purged: list[dict[str, Any]] = []

    async def call(self, awaitable: Any) -> Any:
        return await awaitable

    async def api(self, op: str, payload: dict[str, Any]) -> dict[str, Any]:
        assert op == "STREAM.INFO.KV_b"
        return {"state": self.state}

    def client(self) -> _BucketConn:
        return self

    async def request(self, subject: str, payload: bytes, timeout: float) -> Msg:
        self.purged.append(json.loads(payload))
        return Msg(_client=None, subject="", data=b'{"purged": 1}')  # type: ignore[arg-type]


def _sweep(
    entries: list[_Entry | None], messages: int, last_seq: int
) -> tuple[int, _BucketConn, _Bucket]:
    """The janitor's sweep of bucket ``b`` at time 200; how many it removed, and the fakes."""
    conn, bucket = _BucketConn(messages, last_seq), _Bucket(entries)
    removed = asyncio.run(sweep(conn, bucket, "b", now=200.0))  # type: ignore[arg-type]
    return removed, conn, bucket


def test_the_result_janitor_reads_past_an_end_marker_that_comes_before_the_entries() -> None:
    # nats-py's watcher sends its end-of-initial-values marker at once when the consumer
    # reports nothing pending and nothing has arrived yet, which a loaded machine also
    # sees while the entries are on their way: the sweep reads on to the bucket's last one.
    expired = {"status": "succeeded", "x": 100.0}
    entries: list[_Entry | None] = [
        None,
        _Entry("r.old", expired, 1, 3),
        _Entry("r.live", {"status": "queued"}, 2, 2),
        _Entry("r.gone", None, 4, 1),
        _Entry("v.idem", {"x": 100.0}, 5, 0),
    ]
    removed, conn, bucket = _sweep(entries, messages=5, last_seq=5)
    assert removed == 3
    assert [p["filter"] for p in conn.purged] == ["$KV.b.r.old", "$KV.b.r.gone", "$KV.b.v.idem"]
    assert [p["seq"] for p in conn.purged] == [2, 5, 6]  # each up to its own revision
    assert bucket.stopped


def test_the_result_janitor_reads_past_an_entry_with_nothing_pending_after_it() -> None:
    # Under concurrent writes an entry's count of those still pending may reach zero with
    # more of the bucket's entries to come: the scan goes on to the last one.
    entries: list[_Entry | None] = [
        _Entry("r.a", {"x": 100.0}, 1, 0),
        None,
        _Entry("r.b", {"x": 100.0}, 2, 1),
        _Entry("r.c", {"x": 100.0}, 3, 0),
    ]
    removed, conn, _ = _sweep(entries, messages=3, last_seq=3)
    assert removed == 3
    assert [p["filter"] for p in conn.purged] == ["$KV.b.r.a", "$KV.b.r.b", "$KV.b.r.c"]


def test_the_result_janitor_stops_at_the_last_entry_as_the_scan_began() -> None:
    # Entries written after the scan began come too; the scan ends at the bucket's last
    # entry as it began, not at a timeout.
    entries: list[_Entry | None] = [
        _Entry("r.old", {"x": 100.0}, 3, 1),  # the last as the scan began
        _Entry("r.new", {"x": 100.0}, 9, 0),  # written since: not read
    ]
    removed, conn, _ = _sweep(entries, messages=2, last_seq=3)
    assert removed == 1
    assert [p["filter"] for p in conn.purged] == ["$KV.b.r.old"]


def test_the_result_janitor_does_not_watch_an_empty_bucket() -> None:
    removed, _, bucket = _sweep([], messages=0, last_seq=7)  # a watch would time out
    assert removed == 0
    assert not bucket.watched
    assert not bucket.stopped
