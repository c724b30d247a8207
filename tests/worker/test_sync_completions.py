"""Sync bodies on the worker's threads: outcomes reach the loop in batches, each to the
task that awaits it; a body cancelled before it starts never runs."""

from __future__ import annotations

import ast
import asyncio
import os
import subprocess
import sys
import threading
import time
from typing import Any

import pytest

from taskflow.context import TaskContext
from taskflow.worker import affinity, bodies
from taskflow.worker.affinity import beside_supported
from taskflow.worker.bodies import BodyRun, BodyThreads, run_sync


class _CountingLoop:
    """Counts the thread-safe wake-ups the threads ask of their loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.wakeups = 0

    def create_future(self) -> asyncio.Future[Any]:
        return self.loop.create_future()

    def call_soon(self, callback: Any, *args: Any) -> Any:
        return self.loop.call_soon(callback, *args)

    def call_later(self, delay: float, callback: Any, *args: Any) -> Any:
        return self.loop.call_later(delay, callback, *args)

    def call_soon_threadsafe(self, callback: Any, *args: Any) -> Any:
        self.wakeups += 1
        return self.loop.call_soon_threadsafe(callback, *args)


def _ctx(i: int = 0) -> TaskContext:
    return TaskContext(id=f"t{i}", name="t", attempt=1)


def _close(threads: BodyThreads) -> None:
    """Close the pool and wait for its threads to end (none may leak into other tests)."""
    threads.close()
    for thread in threads.threads:
        thread.join(5)


def test_outcomes_finished_meanwhile_share_one_wakeup() -> None:
    asyncio.run(_outcomes_finished_meanwhile_share_one_wakeup())


async def _outcomes_finished_meanwhile_share_one_wakeup() -> None:
    counting = _CountingLoop(asyncio.get_running_loop())
    threads = BodyThreads(counting, 1, "test")  # type: ignore[arg-type]
    gate = threading.Event()
    posted = threading.Event()

    def body(i: int) -> int:
        gate.wait()
        if i == 7:
            raise ValueError("seven")
        return i

    runs = [threads.submit(body, (i,), {}, _ctx(i)) for i in range(50)]
    # One thread runs them in order: once this one runs, the 50 before it were posted.
    marker = threads.submit(posted.set, (), {}, _ctx(50))
    gate.set()
    assert posted.wait(10)  # the loop has not run since: the outcomes wait together
    assert counting.wakeups == 1
    outcomes = await asyncio.gather(*(run.fut for run in runs), return_exceptions=True)
    assert [o for i, o in enumerate(outcomes) if i != 7] == [i for i in range(50) if i != 7]
    assert isinstance(outcomes[7], ValueError)
    await marker.fut
    # The next outcome after a delivery wakes the loop again.
    before = counting.wakeups
    assert await threads.submit(lambda: "late", (), {}, _ctx(51)).fut == "late"
    assert counting.wakeups == before + 1
    _close(threads)


def test_a_cancelled_waiter_does_not_stop_the_others() -> None:
    asyncio.run(_a_cancelled_waiter_does_not_stop_the_others())


async def _a_cancelled_waiter_does_not_stop_the_others() -> None:
    threads = BodyThreads(asyncio.get_running_loop(), 2, "test")
    gate = threading.Event()
    first = threads.submit(gate.wait, (), {}, _ctx(1))
    second = threads.submit(lambda: 2, (), {}, _ctx(2))
    first.fut.cancel()
    gate.set()
    assert await second.fut == 2
    await first.finished()
    with pytest.raises(asyncio.CancelledError):
        await first.fut
    _close(threads)


class _Submitted:
    """Counts the runs ``run_sync`` handed to the pool (its ``on_submit``)."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.runs: list[BodyRun] = []
        self._done = asyncio.Event()

    def note(self, run: BodyRun) -> None:
        self.runs.append(run)
        if len(self.runs) == self.expected:
            self._done.set()

    async def all(self) -> None:
        """Until every expected run was submitted."""
        await self._done.wait()


async def _callbacks_run() -> None:
    """Until the loop has run every callback scheduled before this call (it runs them in
    the order they were scheduled)."""
    loop = asyncio.get_running_loop()
    reached = loop.create_future()
    loop.call_soon(reached.set_result, None)
    await reached


def test_a_body_cancelled_before_it_starts_never_runs() -> None:
    asyncio.run(_a_body_cancelled_before_it_starts_never_runs())


async def _a_body_cancelled_before_it_starts_never_runs() -> None:
    threads = BodyThreads(asyncio.get_running_loop(), 1, "test")
    gate = threading.Event()
    ran: list[str] = []
    submitted = _Submitted(2)
    blocker = asyncio.ensure_future(
        run_sync(threads, gate.wait, (), {}, _ctx(1), on_submit=submitted.note)
    )
    queued = asyncio.ensure_future(
        run_sync(threads, ran.append, ("late",), {}, _ctx(2), on_submit=submitted.note)
    )
    await submitted.all()  # the one thread is blocked in the first
    queued.cancel()
    with pytest.raises(asyncio.CancelledError):
        await queued  # cancelled at once: it had not started, nothing to unwind
    gate.set()
    assert await blocker is True
    # The thread took the cancelled run off its queue without running it.
    follow = await run_sync(threads, lambda: "next", (), {}, _ctx(3))
    assert follow == "next"
    assert ran == []
    _close(threads)


def test_threads_start_only_as_needed_up_to_the_size() -> None:
    asyncio.run(_threads_start_only_as_needed_up_to_the_size())


async def _threads_start_only_as_needed_up_to_the_size() -> None:
    threads = BodyThreads(asyncio.get_running_loop(), 3, "test")
    for i in range(5):  # one at a time: one thread serves them all
        assert await run_sync(threads, lambda i=i: i, (), {}, _ctx(i)) == i
    assert len(threads.threads) == 1
    gate = threading.Event()
    submitted = _Submitted(5)
    waiting = [
        asyncio.ensure_future(
            run_sync(threads, gate.wait, (), {}, _ctx(i), on_submit=submitted.note)
        )
        for i in range(5)
    ]
    await submitted.all()
    assert len(threads.threads) == 3
    gate.set()
    assert await asyncio.gather(*waiting) == [True] * 5
    _close(threads)
    assert not any(t.is_alive() for t in threads.threads)


def test_a_single_body_handed_to_an_idle_pool_is_started_before_the_loop_goes_on() -> None:
    asyncio.run(_a_single_body_handed_to_an_idle_pool_is_started_before_the_loop_goes_on())


async def _a_single_body_handed_to_an_idle_pool_is_started_before_the_loop_goes_on() -> None:
    threads = BodyThreads(asyncio.get_running_loop(), 1, "test")
    threads.hand_over = True  # as on one CPU
    threads.handoff_wait = 30.0  # the hand-over, not its bound, is under test
    assert await run_sync(threads, lambda: 1, (), {}, _ctx(1)) == 1  # one idle thread now
    gate = threading.Event()
    first = threads.submit(gate.wait, (), {}, _ctx(2))
    await _callbacks_run()  # the hand-over was scheduled by the submit
    # Started: too late to cancel. Without the hand-over the thread would (most often)
    # still be waiting for the interpreter lock, and the run could be cancelled. The
    # thread may also have taken it on its own while the loop polled its selector.
    assert first.cancel() is False
    assert threads.handed_over <= 1
    # A pool with a body running does not wait: its one thread is blocked in the first
    # body, so a wait would last the whole bound.
    sent = time.monotonic()
    second = threads.submit(lambda: 2, (), {}, _ctx(3))
    await _callbacks_run()
    assert time.monotonic() - sent < 10.0
    gate.set()
    assert await first.fut is True
    assert await second.fut == 2
    _close(threads)


def test_bodies_submitted_together_to_an_idle_pool_are_not_waited_for() -> None:
    asyncio.run(_bodies_submitted_together_to_an_idle_pool_are_not_waited_for())


async def _bodies_submitted_together_to_an_idle_pool_are_not_waited_for() -> None:
    threads = BodyThreads(asyncio.get_running_loop(), 4, "test")
    threads.hand_over = True
    threads.handoff_wait = 30.0
    gate = threading.Event()
    warm = [threads.submit(gate.wait, (), {}, _ctx(i)) for i in range(4)]
    gate.set()
    assert [await run.fut for run in warm] == [True] * 4  # four idle threads now
    assert threads.handed_over == 0
    runs = [threads.submit(lambda i=i: i, (), {}, _ctx(i)) for i in range(3)]
    assert [await run.fut for run in runs] == [0, 1, 2]
    assert threads.handed_over == 0
    _close(threads)


def test_a_hand_over_past_its_bound_still_runs_the_body_once() -> None:
    asyncio.run(_a_hand_over_past_its_bound_still_runs_the_body_once())


async def _a_hand_over_past_its_bound_still_runs_the_body_once() -> None:
    threads = BodyThreads(asyncio.get_running_loop(), 1, "test")
    assert await run_sync(threads, lambda: 0, (), {}, _ctx(0)) == 0
    threads.handoff_wait = 0.0  # the loop never waits: the thread takes the run later
    ran: list[int] = []
    for i in range(20):
        assert await run_sync(threads, ran.append, (i,), {}, _ctx(i)) is None
    assert ran == list(range(20))
    _close(threads)


def test_one_body_at_a_time_goes_to_the_thread_that_became_idle_last() -> None:
    asyncio.run(_one_body_at_a_time_goes_to_the_thread_that_became_idle_last())


async def _one_body_at_a_time_goes_to_the_thread_that_became_idle_last() -> None:
    threads = BodyThreads(asyncio.get_running_loop(), 3, "test")
    gates = [threading.Event() for _ in range(3)]
    busy = [threads.submit(gate.wait, (), {}, _ctx(i)) for i, gate in enumerate(gates)]
    assert len(threads.threads) == 3
    for gate, run in zip(gates, busy, strict=True):  # idle one after the other
        gate.set()
        await run.fut
    last = busy[-1]
    assert last.ident is not None
    # Threads taking turns would each wake (and be cold) in their turn; one serves them all.
    ran = [await run_sync(threads, threading.get_ident, (), {}, _ctx(i)) for i in range(10)]
    assert set(ran) == {last.ident}
    assert len(threads.threads) == 3
    _close(threads)


def test_a_body_submitted_while_a_thread_finishes_waits_for_it_instead_of_a_new_thread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Each thread, after a body returned, waits here before it takes the next run or goes
    # idle: the moment in which a task sent in answer to the outcome may arrive.
    finishing = threading.Event()
    proceed = threading.Event()
    call = BodyRun.call

    def call_then_wait(run: BodyRun) -> bool:
        ran = call(run)
        finishing.set()
        assert proceed.wait(10)
        return ran

    monkeypatch.setattr(BodyRun, "call", call_then_wait)
    asyncio.run(_a_body_submitted_while_a_thread_finishes_waits_for_it(finishing, proceed))


async def _a_body_submitted_while_a_thread_finishes_waits_for_it(
    finishing: threading.Event, proceed: threading.Event
) -> None:
    threads = BodyThreads(asyncio.get_running_loop(), 4, "test")
    threads.handoff_wait = 0.0
    first = threads.submit(threading.get_ident, (), {}, _ctx(1))
    assert finishing.wait(10) and first.done()
    second = threads.submit(threading.get_ident, (), {}, _ctx(2))
    assert len(threads.threads) == 1  # no second thread to take turns with the first
    proceed.set()
    assert await second.fut == await first.fut
    assert len(threads.threads) == 1
    _close(threads)


def test_a_burst_wakes_one_idle_thread_which_wakes_the_next() -> None:
    asyncio.run(_a_burst_wakes_one_idle_thread_which_wakes_the_next())


async def _a_burst_wakes_one_idle_thread_which_wakes_the_next() -> None:
    threads = BodyThreads(asyncio.get_running_loop(), 4, "test")
    gate = threading.Event()
    warm = [threads.submit(gate.wait, (), {}, _ctx(i)) for i in range(4)]
    gate.set()
    assert [await run.fut for run in warm] == [True] * 4  # four idle threads now
    # Submitted in one step of the loop: one thread is woken, the others wait their turn
    # (woken one by one as each woken thread takes its run), not all four at once.
    runs = [threads.submit(lambda i=i: i, (), {}, _ctx(i)) for i in range(4)]
    with threads._lock:  # noqa: SLF001 -- looked at before the woken threads get far
        woken = 4 - len(threads._idle)  # noqa: SLF001
        waiting = len(threads._pending)  # noqa: SLF001
    assert woken + waiting == 4
    assert waiting >= 2  # at most the first woken thread took its run and woke one more
    assert [await run.fut for run in runs] == [0, 1, 2, 3]
    _close(threads)


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="Linux only")
def test_the_hand_over_is_made_only_where_the_thread_wakes_on_the_loops_cpu() -> None:
    seen: dict[str, Any] = {}

    def pool_on(cpus: set[int], key: str, beside: bool) -> None:
        os.sched_setaffinity(0, cpus)  # this thread's CPUs: the loop's, below

        async def make() -> None:
            threads = BodyThreads(asyncio.get_running_loop(), 1, "test")
            seen[key] = threads.hand_over
            threads.beside = beside and threads.beside
            if not threads.hand_over:
                threads.handoff_wait = 30.0
                for i in range(3):
                    run = run_sync(threads, lambda i=i: i, (), {}, _ctx(i), single=True)
                    assert await run == i
                # The first body started the thread; the next two found it idle.
                seen[f"{key} waited"] = threads.handed_over
                seen[f"{key} placed"] = threads.placed
            _close(threads)

        asyncio.run(make())

    allowed = os.sched_getaffinity(0)
    for cpus, key, beside in (
        ({min(allowed)}, "one", True),
        (allowed, "all", False),
        (allowed, "beside", True),
    ):
        thread = threading.Thread(target=pool_on, args=(cpus, key, beside))
        thread.start()
        thread.join(30)
    assert seen["one"] is True
    assert seen["all"] is (len(allowed) == 1)
    if len(allowed) > 1:
        # On several CPUs, a woken thread would start on another one: no hand-over...
        assert seen["all waited"] == 0
        assert seen["all placed"] == 0
        # ...unless it is woken on the loop's CPU (where the platform lets it be); the
        # loop then waits for it, unless it took its run on its own already.
        if beside_supported(allowed):
            assert seen["beside placed"] == 2


@pytest.mark.skipif(
    not hasattr(os, "sched_setaffinity") or not beside_supported(os.sched_getaffinity(0)),
    reason="needs several CPUs that threads can choose among (Linux)",
)
def test_idle_threads_wake_on_their_wakers_cpu_and_run_with_all_their_cpus(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Each placement: the CPU the waking thread ran on as it placed the idle thread, and
    # what that thread may run on then.
    placed: list[tuple[int, set[int]]] = []
    place, cpu_now = bodies.place_beside, affinity.current_cpu
    chosen = threading.local()
    noted = threading.Lock()

    def current_cpu_noted() -> int | None:
        chosen.cpu = cpu_now()
        return chosen.cpu  # type: ignore[no-any-return]

    def place_and_look(tid: int) -> set[int] | None:
        chosen.cpu = None
        before = place(tid)
        cpu = chosen.cpu
        with noted:
            placed.append((-1 if cpu is None else cpu, os.sched_getaffinity(tid)))
        return before

    monkeypatch.setattr(affinity, "current_cpu", current_cpu_noted)
    monkeypatch.setattr(bodies, "place_beside", place_and_look)
    allowed = os.sched_getaffinity(0)
    asyncio.run(_idle_threads_wake_on_their_wakers_cpu(placed, allowed))
    assert placed  # every placement was on the waker's CPU
    assert all(woken_on == {cpu} for cpu, woken_on in placed), placed


async def _idle_threads_wake_on_their_wakers_cpu(
    placed: list[tuple[int, set[int]]], allowed: set[int]
) -> None:
    threads = BodyThreads(asyncio.get_running_loop(), 3, "test")
    assert threads.beside
    assert await run_sync(threads, lambda: 0, (), {}, _ctx(0), single=True) == 0
    assert placed == [] and threads.placed == 0  # a new thread is not placed
    # A body the executor does not call single (other tasks under way, e.g. the rest of
    # a batch still on their way to their bodies) is placed but not waited for.
    threads.handoff_wait = 30.0
    assert await run_sync(threads, lambda: 1, (), {}, _ctx(0)) == 1
    assert threads.placed == 1 and threads.handed_over == 0
    placed.clear()
    threads.placed = 0

    def cpus_of_a_program() -> list[int]:
        # What the body, and what it starts, run with: every CPU the thread had.
        out = subprocess.run(
            [sys.executable, "-c", "import os; print(sorted(os.sched_getaffinity(0)))"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        return [sorted(os.sched_getaffinity(0)), *ast.literal_eval(out)]

    seen = await run_sync(threads, cpus_of_a_program, (), {}, _ctx(1), single=True)
    assert seen == [sorted(allowed), *sorted(allowed)]
    assert threads.placed == 1
    thread = threads.threads[0].native_id
    assert thread is not None
    assert os.sched_getaffinity(thread) == allowed  # and it has its CPUs back
    # A burst to three idle threads: the loop wakes the first, each woken thread the
    # next (see test_a_burst_wakes_one_idle_thread_which_wakes_the_next), each placed
    # on its waker's CPU; every body runs with all the CPUs, none is waited for.
    gate = threading.Barrier(3, timeout=10)
    warm = [threads.submit(gate.wait, (), {}, _ctx(i)) for i in range(3)]
    assert sorted([await run.fut for run in warm]) == [0, 1, 2]  # three idle threads
    placed_before, handed_over = threads.placed, threads.handed_over
    together = threading.Barrier(3, timeout=10)

    def body() -> list[int]:
        together.wait()  # the three run at once
        return sorted(os.sched_getaffinity(0))

    burst = [threads.submit(body, (), {}, _ctx(i), single=i == 0) for i in range(3)]
    assert [await run.fut for run in burst] == [sorted(allowed)] * 3
    assert threads.placed == placed_before + 3
    assert threads.handed_over == handed_over
    _close(threads)
