"""delay() from a plain thread publishes without a hop onto the app's event loop."""

from __future__ import annotations

import threading

from taskflow import App, TaskStatus


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
