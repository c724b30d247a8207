"""Poison messages among good ones, injected straight into Redis and NATS.

A foreign producer, an operator's hand edit or a bug can put a message on the broker
whose framing (the broker's own fields, headers, subject tokens) or body (the envelope)
is malformed. Each one must be dead-lettered on its own (reason ``undecodable``) and
its record, where an id is known, failed; the good tasks fetched in the same batch all
run, and the worker goes on consuming.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import nats
import pytest
import redis

from taskflow import App, TaskStatus
from taskflow.brokers.base import DeadLetter
from taskflow.brokers.nats import NatsBroker
from taskflow.brokers.redis import RedisBroker
from tests.integration import nats_helpers, redis_helpers

pytestmark = pytest.mark.integration

QUEUE = "poison"


def envelope(task_id: str, **changes: Any) -> bytes:
    """The JSON envelope a foreign producer writes for ``poison.echo(7)``."""
    doc = {"v": 1, "id": task_id, "task": "poison.echo", "queue": QUEUE, "args": [7]}
    doc.update(changes)
    return json.dumps(doc).encode()


def new_id() -> str:
    return uuid.uuid4().hex


def make_app(url: str) -> App:
    app = App("poison", broker=url, default_queue=QUEUE)

    @app.task(name="poison.echo")
    def echo(x: int) -> int:
        return x

    return app


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def dead_letter_reader(inspector: RedisBroker | NatsBroker) -> Callable[[], list[DeadLetter]]:
    """A reader of ``QUEUE``'s dead letters through ``inspector``, connecting for each read."""

    def dead_letters() -> list[DeadLetter]:
        async def read() -> list[DeadLetter]:
            await inspector.connect()
            try:
                return await inspector.dead_letters(QUEUE, limit=1000)
            finally:
                await inspector.close()

        return asyncio.run(read())

    return dead_letters


def run_worker_and_check(
    app: App,
    good: list[Any],
    bad: dict[str, bool],
    dead_letters: Callable[[], list[DeadLetter]],
) -> None:
    """Run a worker; every good task succeeds, every id in ``bad`` is dead-lettered
    ``undecodable``, and those mapped to True (a task id) end with a failed record."""
    with app.worker(queues=[QUEUE], concurrency=4):
        assert [r.get(timeout=15) for r in good] == list(range(len(good)))
        letters: dict[str, DeadLetter] = {}

        def all_dead() -> bool:
            letters.update({d.id: d for d in dead_letters()})
            return set(bad) <= set(letters)

        wait_for(all_dead, 15, f"dead letters {sorted(set(bad) - set(letters))}")
        assert {letters[i].reason for i in bad} == {"undecodable"}
        for task_id, has_record in bad.items():
            if has_record:
                result = app.result(task_id)
                wait_for(lambda r=result: r.status == TaskStatus.FAILED, 10, f"{task_id} failed")
                # Failed as unreadable, not blamed on a lost worker.
                error = app.get_task(task_id).error or {}
                assert error.get("type") == "taskflow.codec.EnvelopeError", error
        # Still consuming.
        assert app.send_task("poison.echo", args=(41,)).get(timeout=10) == 41


# -- Redis -----------------------------------------------------------------------------


@pytest.fixture
def redis_url() -> Iterator[tuple[str, str]]:
    url, prefix = redis_helpers.shared_url(lease=5)
    yield url, prefix
    redis_helpers.drop_prefix(url, prefix)


def test_redis_poison_framing_and_bodies_are_dead_lettered_alone(
    redis_url: tuple[str, str],
) -> None:
    url, prefix = redis_url
    raw = redis.Redis.from_url(url.split("?", 1)[0])
    key = "{" + prefix + "}"
    bad: dict[str, bool] = {}
    with make_app(url) as app:
        good = []
        for i in range(12):
            good.append(app.send_task("poison.echo", args=(i,)))
            if i % 3 != 0:
                continue
            # A task sent normally, then its framing or body spoiled by hand.
            victims = [app.send_task("poison.echo", args=(100 + i,)) for _ in range(6)]
            spoils: list[tuple[str, Any]] = [
                ("dc", "many"),
                ("p", "high"),
                ("md", "0"),
                ("q", "elsewhere"),
                ("b", b"\xff not json"),
                ("b", envelope(victims[5].id, canvas=7)),
            ]
            for victim, (field, value) in zip(victims, spoils, strict=True):
                raw.hset(f"{key}:m:{victim.id}", field, value)
                bad[victim.id] = True
        # A message key that is not a hash at all.
        wrong = app.send_task("poison.echo", args=(200,))
        raw.delete(f"{key}:m:{wrong.id}")
        raw.set(f"{key}:m:{wrong.id}", "junk")
        bad[wrong.id] = True
        # A foreign message whose id is not UTF-8 (no task can have it: no record).
        odd = b"\xfe\xffodd"
        raw.hset(
            f"{key}:m:".encode() + odd,
            mapping={"b": envelope("odd"), "q": QUEUE, "p": 0, "md": 1, "dc": 0, "st": "r"},
        )
        raw.zadd(f"{key}:q:{QUEUE}:ready", {odd: 9 * 2**40})
        bad[odd.decode(errors="backslashreplace")] = False
        # A delayed message whose priority goes bad while it waits.
        later = app.send_task("poison.echo", args=(300,), countdown=0.3)
        raw.hset(f"{key}:m:{later.id}", "p", "11")
        bad[later.id] = True
        raw.close()

        inspector = RedisBroker(url.split("?", 1)[0], prefix=prefix)
        run_worker_and_check(app, good, bad, dead_letter_reader(inspector))


# -- NATS ------------------------------------------------------------------------------


@pytest.fixture
def nats_url() -> Iterator[tuple[str, str]]:
    url, prefix = nats_helpers.shared_url(lease=5)
    yield url, prefix
    nats_helpers.drop_prefix(url, prefix)


async def _publish_raw(server: str, items: list[tuple[str, bytes, dict[str, str]]]) -> None:
    nc = await nats.connect(server)
    try:
        js = nc.jetstream()
        for subject, body, headers in items:
            await js.publish(subject, body, headers=headers)
    finally:
        await nc.close()


def test_nats_poison_headers_subjects_and_bodies_are_dead_lettered_alone(
    nats_url: tuple[str, str],
) -> None:
    url, prefix = nats_url
    server = url.split("?", 1)[0]
    work, delay = f"{prefix}.q.{QUEUE}.p0", f"{prefix}.d.{QUEUE}"
    bad: dict[str, bool] = {}
    with make_app(url) as app:
        good = [app.send_task("poison.echo", args=(0,))]  # creates the streams
        raw: list[tuple[str, bytes, dict[str, str]]] = []

        def foreign(subject: str, body: bytes, headers: dict[str, str], record: bool) -> None:
            raw.append((subject, body, headers))
            bad[subject.rsplit(".", 1)[1]] = record

        for i in range(1, 12):
            good.append(app.send_task("poison.echo", args=(i,)))
            if i % 4 != 1:
                continue
            mids = [new_id() for _ in range(7)]
            foreign(f"{work}.{mids[0]}", envelope(mids[0]), {"Tf-Max": "many"}, True)
            foreign(f"{work}.{mids[1]}", envelope(mids[1]), {"Tf-Base": "-1"}, True)
            foreign(f"{work}.{mids[2]}", b"{not json", {"Tf-Max": "1"}, True)
            foreign(f"{work}.{mids[3]}", envelope(mids[3], canvas=7), {"Tf-Max": "1"}, True)
            foreign(f"{delay}.{mids[4]}", envelope(mids[4]), {"Tf-Eta": "soon"}, True)
            foreign(
                f"{delay}.{mids[5]}",
                envelope(mids[5]),
                {"Tf-Eta": repr(time.time()), "Tf-Pri": "12"},
                True,
            )
            foreign(f"{work}.={mids[6]}zz", envelope(mids[6]), {}, False)  # bad id token
            asyncio.run(_publish_raw(server, raw))
            raw.clear()

        inspector = NatsBroker(server, prefix=prefix)
        run_worker_and_check(app, good, bad, dead_letter_reader(inspector))
