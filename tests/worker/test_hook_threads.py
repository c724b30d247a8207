"""Plain-function hooks run on the app's hook threads, off the worker's loop: a hook may
block, send a follow-up task or wait for one, and holds up only its own task."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import queue
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from taskflow import App, TaskEvent
from taskflow.brokers import MemoryBroker

WAIT = 10.0


def test_a_sync_hook_may_send_a_follow_up_task_and_wait_for_it(app: App) -> None:
    # On the loop, delay() in a hook raised "a blocking taskflow call was made from async
    # code" (logged and ignored): the follow-up was never sent.
    @app.task(name="shop.order")
    def order(n: int) -> int:
        return n

    @app.task(name="shop.invoice")
    def invoice(n: int) -> int:
        return n * 10

    follow_ups: queue.Queue[int] = queue.Queue()

    @app.hook("success")
    def send_invoice(event: TaskEvent) -> None:
        if event.task_name == "shop.order":
            follow_ups.put(invoice.delay(event.result).get(timeout=WAIT))

    with app.worker(concurrency=2):
        assert order.delay(4).get(timeout=WAIT) == 4
        assert follow_ups.get(timeout=WAIT) == 40


def test_a_blocked_sync_hook_holds_up_only_its_own_task(app: App) -> None:
    # On the loop, a hook waiting on a slow server stopped every task of the worker, and
    # the renewals of their leases.
    release = threading.Event()
    blocked = threading.Event()
    threads: list[str] = []

    @app.task(name="shop.slow")
    def slow() -> str:
        return "slow"

    @app.task(name="shop.quick")
    def quick() -> str:
        return "quick"

    @app.hook("start")
    def audit(event: TaskEvent) -> None:
        threads.append(threading.current_thread().name)
        if event.task_name == "shop.slow":
            blocked.set()
            release.wait(WAIT)

    held = slow.delay()
    with app.worker(concurrency=2):
        assert blocked.wait(WAIT)
        assert quick.delay().get(timeout=WAIT) == "quick"
        assert held.status.value in ("queued", "running")  # its start hook still runs
        release.set()
        assert held.get(timeout=WAIT) == "slow"
    assert set(threads) == {"taskflow-hook"}


def test_a_coroutine_hook_runs_on_the_loop(app: App) -> None:
    loops: queue.Queue[bool] = queue.Queue()

    @app.task
    def job() -> None: ...

    @app.hook("success")
    async def on_loop(event: TaskEvent) -> None:
        loops.put(asyncio.get_running_loop() is app.kernel.loop.loop)

    with app.worker(concurrency=1):
        job.delay().get(timeout=WAIT)
        assert loops.get(timeout=WAIT) is True


def test_hook_threads_start_as_needed_up_to_their_limit_and_are_daemons() -> None:
    # Daemons: a hook stuck in a call that never returns must not keep the process alive.
    from taskflow.kernel.hooks import HookThreads

    pool = HookThreads(limit=2)
    gate = threading.Event()
    entered: queue.Queue[str] = queue.Queue()

    def hook(event: object) -> str:
        entered.put(threading.current_thread().name)
        gate.wait(WAIT)
        return "done"

    async def main() -> list[object]:
        futures = [pool.run(hook, None) for _ in range(3)]  # type: ignore[arg-type]
        names = [entered.get(timeout=WAIT) for _ in range(2)]
        assert entered.empty()  # the third waits for a thread: two is the limit
        hook_threads = [t for t in threading.enumerate() if t.name == "taskflow-hook"]
        assert len(hook_threads) == 2 and all(t.daemon for t in hook_threads)
        assert names == ["taskflow-hook"] * 2
        gate.set()
        return list(await asyncio.gather(*futures))

    try:
        assert asyncio.run(main()) == ["done"] * 3
    finally:
        gate.set()
        pool.close()
        for thread in threading.enumerate():
            if thread.name == "taskflow-hook":
                thread.join(WAIT)


def test_hooks_waiting_for_a_thread_are_logged_once_a_minute(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Every thread stuck in a hook stalled the tasks whose hooks waited, and nothing said so.
    from taskflow.kernel import hooks

    monkeypatch.setattr(hooks, "SATURATED_AFTER", 0.0)  # checked on the next loop turn
    pool = hooks.HookThreads(limit=1)
    gate = threading.Event()
    entered = threading.Event()

    def stuck(event: object) -> None:
        entered.set()
        gate.wait(WAIT)

    def page(event: object) -> None: ...

    event = TaskEvent("success", "t-1", "shop.job", "default", "succeeded", 1)

    async def main() -> None:
        first = pool.run(stuck, event)
        assert entered.wait(WAIT)
        waiting = [pool.run(page, event) for _ in range(2)]
        for _ in range(5):
            await asyncio.sleep(0)  # turns of the loop, for the checks it scheduled
        gate.set()
        await asyncio.gather(first, *waiting)
        pool.run(page, event)  # a thread is free now: no check, no warning
        for _ in range(5):
            await asyncio.sleep(0)

    with caplog.at_level(logging.WARNING, logger="taskflow.middleware"):
        try:
            asyncio.run(main())
        finally:
            gate.set()
            pool.close()
    assert caplog.messages == [
        "hooks have waited 0s for a hook thread, all 1 of which are in hooks: 2 wait (the "
        "success hook test_hooks_waiting_for_a_thread_are_logged_once_a_minute.<locals>.page "
        "of task shop.job[t-1] among them); hooks that block for long, or never return, hold "
        "their tasks' slots"
    ]


def _succeeds_beside(app: App, hook: Any) -> None:
    """Run a task with ``hook`` as its app's ``success`` hook: the task succeeds, and its
    finish event still comes (the hook's failure ended the hook's wait)."""

    @app.task(name="shop.job")
    def job() -> int:
        return 1

    app.hook("success")(hook)
    with app.worker(concurrency=1) as worker:
        events = worker.subscribe()
        assert job.delay().get(timeout=WAIT) == 1
        assert events.get(timeout=WAIT).status == "succeeded"


def test_a_hook_that_raises_on_its_thread_is_logged_and_the_task_succeeds(
    app: App, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(event: TaskEvent) -> None:
        raise SystemExit(3)

    _succeeds_beside(app, broken)
    said = [r.getMessage() for r in caplog.records]
    assert any("success hook" in m and "shop.job" in m for m in said)


def test_a_hook_that_raises_stop_iteration_on_its_thread_is_logged(
    app: App, caplog: pytest.LogCaptureFixture
) -> None:
    # A future refuses StopIteration: handed over as is, the hook's wait never ended.
    def exhausted(event: TaskEvent) -> None:
        next(iter(()))

    _succeeds_beside(app, exhausted)
    logged = [r.exc_info[1] for r in caplog.records if r.exc_info and "hook" in r.getMessage()]
    assert [type(e) for e in logged] == [RuntimeError]
    assert isinstance(logged[0].__cause__, StopIteration)


class TouchLog(MemoryBroker):
    """A memory broker with short leases that reports each renewal: (message id, held)."""

    def __init__(self) -> None:
        super().__init__(lease=0.3)
        self.touched: queue.Queue[tuple[str, bool]] = queue.Queue()

    def _settle(self, mid: str, token: int, action: str, **kw: Any) -> bool:
        done = super()._settle(mid, token, action, **kw)
        if action == "touch":
            self.touched.put((mid, done))
        return done


@dataclasses.dataclass
class SlowHook:
    """An app on a :class:`TouchLog` broker whose ``success`` hook, for one task, says it
    was entered and waits until released."""

    app: App
    broker: TouchLog
    entered: threading.Event
    release: threading.Event


@contextlib.contextmanager
def slow_success_hook(name: str, task_name: str) -> Iterator[SlowHook]:
    broker = TouchLog()
    with App(name, broker=broker) as app:
        slow = SlowHook(app, broker, threading.Event(), threading.Event())

        @app.hook("success")
        def wait_for_release(event: TaskEvent) -> None:
            if event.task_name == task_name:
                slow.entered.set()
                slow.release.wait(60)

        try:
            yield slow
        finally:
            slow.release.set()


def test_a_message_settled_before_its_slow_hook_returns_is_not_renewed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Its lease was renewed while the hook ran: the broker answered that the message was
    # no longer held, and the worker warned "the lease ran out; the broker delivers it
    # again" about a task done and acknowledged.
    with slow_success_hook("slow-hook", "shop.quick") as slow:
        app, broker = slow.app, slow.broker

        @app.task(name="shop.quick")
        def quick() -> int:
            return 1

        @app.task(name="shop.long")
        def long() -> int:
            slow.release.wait(WAIT)
            return 2

        held = long.delay()
        done = quick.delay()
        with app.worker(concurrency=2):
            assert slow.entered.wait(WAIT)
            while not broker.touched.empty():  # renewals from before the ack
                broker.touched.get_nowait()
            # Three renewals of the running task: a third of a lease apart, so the other
            # message would have been renewed meanwhile, were it still held.
            renewed = [broker.touched.get(timeout=WAIT) for _ in range(3)]
            slow.release.set()
            assert (held.get(timeout=WAIT), done.get(timeout=WAIT)) == (2, 1)
    assert renewed == [(held.id, True)] * 3
    assert "ran out before it was renewed" not in caplog.text


def test_a_graceful_stop_does_not_wait_past_its_grace_for_a_finished_tasks_hook(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The job counted as still writing its outcome: the stop waited 10 s more for it.
    with slow_success_hook("stop-in-hook", "shop.job") as slow:
        app = slow.app

        @app.task(name="shop.job")
        def job() -> int:
            return 1

        done = job.delay()
        worker = app.worker(concurrency=1).start()
        try:
            assert slow.entered.wait(WAIT)
            with caplog.at_level(logging.INFO, logger="taskflow.worker"):
                stopper = threading.Thread(target=worker.stop, kwargs={"timeout": 0.1})
                stopper.start()
                stopper.join(5.0)
                assert not stopper.is_alive()
        finally:
            slow.release.set()
        assert done.get(timeout=WAIT) == 1
        assert app.kernel.call(slow.broker.depth("default")) == {
            "ready": 0,
            "scheduled": 0,
            "inflight": 0,
            "dead": 0,
        }
    assert "stopping without waiting for the hooks of 1 finished tasks" in caplog.text
