"""delay() from a plain thread publishes without a hop onto the app's event loop."""

from __future__ import annotations

import os
import threading
import uuid

import pytest

from taskflow import App, TaskStatus
from taskflow.kernel.prepare import new_task_id


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
