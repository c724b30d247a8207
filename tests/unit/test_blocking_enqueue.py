"""delay() from a plain thread publishes without a hop onto the app's event loop."""

from __future__ import annotations

import logging
import os
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import pytest

from taskflow import App, TaskStatus
from taskflow.brokers.base import Message
from taskflow.errors import BrokerError
from taskflow.kernel.prepare import new_task_id
from taskflow.results.memory import MemoryResultStore


def test_delay_does_not_need_the_apps_loop_once_connected(app: App) -> None:
    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    add.delay(0, 0)  # connects and declares the queue through the loop
    release = threading.Event()
    blocked = threading.Event()

    async def block_the_loop() -> None:
        blocked.set()
        release.wait(10)  # deliberately blocks the loop thread

    future = app.kernel.loop.submit(block_the_loop())
    assert blocked.wait(5)
    try:
        box: list[object] = []
        sender = threading.Thread(target=lambda: box.append(add.delay(2, 3)))
        sender.start()
        sender.join(5)
        assert not sender.is_alive(), "delay() waited for the blocked loop"
    finally:
        release.set()
        future.result(5)
    assert box[0].status is TaskStatus.QUEUED  # type: ignore[attr-defined]
    assert app.worker(concurrency=1).run_until_idle() == 2
    assert box[0].get(timeout=1) == 5  # type: ignore[attr-defined]


def test_sends_that_need_the_loop_still_take_it(app: App) -> None:
    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    first = add.apply_async(args=(1, 1), idempotency_key="k")
    again = add.apply_async(args=(1, 1), idempotency_key="k")
    assert first.id == again.id


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_generated_task_ids_are_random_uuids_never_repeated_by_a_forked_child() -> None:
    drawn = [new_task_id() for _ in range(1000)]
    assert len(set(drawn)) == len(drawn)
    for text in drawn:
        parsed = uuid.UUID(text)
        assert (str(parsed), parsed.version, parsed.variant) == (text, 4, uuid.RFC_4122)

    new_task_id()  # the parent now holds ids it has not handed out yet
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report the ids it draws, then leave at once
        os.close(reader)
        os.write(writer, " ".join(new_task_id() for _ in range(50)).encode())
        os._exit(0)
    os.close(writer)
    with os.fdopen(reader, "rb") as pipe:
        child = set(pipe.read().decode().split())
    os.waitpid(pid, 0)
    assert len(child) == 50
    assert child.isdisjoint(new_task_id() for _ in range(500))


class _Split(MemoryResultStore):
    """Tells when a ``delay()`` sends its queued records, reads their answer, and
    publishes; ``fail_answer``: the answer is an error."""

    def __init__(self, steps: list[str], *, fail_answer: bool = False) -> None:
        super().__init__()
        self.steps = steps
        self.fail_answer = fail_answer
        self.sent: list[str] = []

    def begin_create_many_blocking(
        self, items: Sequence[tuple[str, Mapping[str, Any]]], ttl: float | None
    ) -> Callable[[], list[bool]]:
        self.steps.append("records sent")
        self.sent += [task_id for task_id, _ in items]
        written = self.create_many_blocking(items, ttl)

        def finish() -> list[bool]:
            self.steps.append("answer read")
            if self.fail_answer:
                raise BrokerError("the store went away")
            return written

        return finish


@contextmanager
def _split_app(
    steps: list[str], *, fail_answer: bool = False, fail_publish: bool = False
) -> Iterator[tuple[App, Any]]:
    """An app whose store records the steps of a send (``_Split``) and whose broker notes
    each publish (``fail_publish``: it fails), connected, with its task ``add``."""
    app = App("split", results=_Split(steps, fail_answer=fail_answer))
    publish = app.broker.publish_blocking

    def publish_blocking(messages: Sequence[Message]) -> None:
        steps.append("published")
        if fail_publish:
            raise BrokerError("the broker went away")
        publish(messages)

    app.broker.publish_blocking = publish_blocking  # type: ignore[method-assign]

    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    try:
        app.kernel.loop.call(app.kernel.backends.connect())
        app.kernel.loop.call(app.kernel.backends.declare("default"))
        yield app, add
    finally:
        app.close()


def test_delay_publishes_before_it_reads_the_answer_of_its_queued_record() -> None:
    steps: list[str] = []
    with _split_app(steps) as (app, add):
        handle = add.delay(2, 3)
        # One round trip of latency: the message goes out while the record's answer is
        # on its way.
        assert steps == ["records sent", "published", "answer read"]
        assert handle.status is TaskStatus.QUEUED
        assert app.worker(concurrency=1).run_until_idle() == 1
        assert handle.get(timeout=1) == 5


def test_a_failed_publish_undoes_the_queued_record_it_sent_first() -> None:
    steps: list[str] = []
    with _split_app(steps, fail_publish=True) as (app, add):
        with pytest.raises(BrokerError, match="broker went away"):
            add.delay(2, 3)
        assert steps == ["records sent", "published", "answer read"]
        store = app.results
        assert isinstance(store, _Split) and len(store.sent) == 1
        # The record it sent is gone again, and nothing was queued.
        assert app.kernel.loop.call(store.get(store.sent[0])) is None
        assert app.worker(concurrency=1).run_until_idle() == 0


def test_a_record_not_written_after_the_publish_is_logged_and_the_task_still_runs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    steps: list[str] = []
    with _split_app(steps, fail_answer=True) as (app, add):
        with caplog.at_level(logging.WARNING, logger="taskflow"):
            handle = add.delay(2, 3)
        assert "queued records not written" in caplog.text
        assert "the store went away" in caplog.text
        assert app.worker(concurrency=1).run_until_idle() == 1
        assert handle.get(timeout=1) == 5
