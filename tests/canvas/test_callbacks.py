"""Callbacks (``link``/``link_error``), lineage, partial arguments and canvas cancel, on
every backend pair registered for the contract suites, with real in-process workers.

Waiting is push-based (``get(timeout=...)``, events and queues with a timeout), never a sleep.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections import Counter
from types import SimpleNamespace
from typing import Any

import pytest

from taskflow import (
    App,
    TaskCancelled,
    TaskContext,
    TaskFailed,
    TaskStatus,
    chain,
    chord,
    current_task,
    group,
)

TIMEOUT = 20.0


def define(app: App) -> SimpleNamespace:
    """The tasks the tests use; ``notes`` receives what ``note`` was called with."""
    ran: Counter[str] = Counter()
    lock = threading.Lock()
    notes: queue.Queue[tuple[str, Any]] = queue.Queue()
    lineage: dict[str, tuple[str | None, str | None]] = {}
    entered = threading.Event()
    stopped = threading.Event()

    def count(name: str) -> None:
        with lock:
            ran[name] += 1
        ctx = current_task()
        assert ctx is not None
        lineage[ctx.id] = (ctx.root_id, ctx.parent_id)

    @app.task(name="add")
    def add(x: int, y: int) -> int:
        count("add")
        return x + y

    @app.task(name="mul")
    def mul(x: int, y: int) -> int:
        count("mul")
        return x * y

    @app.task(name="tsum")
    def tsum(xs: list[int]) -> int:
        count("tsum")
        return sum(xs)

    @app.task(name="boom", retries=1, retry_backoff=0.0)
    def boom(x: int) -> int:
        count("boom")
        raise ValueError(f"boom {x}")

    @app.task(name="note")
    def note(value: Any, tag: str) -> None:
        count("note")
        notes.put((tag, value))

    @app.task(name="spawn")
    def spawn(x: int) -> str:
        count("spawn")
        return add.delay(x, 1).id

    @app.task(name="spawn_chain")
    def spawn_chain(x: int) -> str:
        count("spawn_chain")
        return chain(add.s(x, 1), mul.s(2)).apply_async().id

    @app.task(name="stoppable", bind=True)
    def stoppable(ctx: TaskContext, x: int) -> int:
        count("stoppable")
        entered.set()
        try:
            ctx.cancelled.wait(TIMEOUT)
        finally:  # a cancel also interrupts the body (Interrupted raised in its thread)
            if ctx.cancelled.is_set():
                stopped.set()
        return x

    return SimpleNamespace(
        add=add,
        mul=mul,
        tsum=tsum,
        boom=boom,
        note=note,
        spawn=spawn,
        spawn_chain=spawn_chain,
        stoppable=stoppable,
        ran=ran,
        notes=notes,
        lineage=lineage,
        entered=entered,
        stopped=stopped,
    )


@pytest.fixture
def t(backend_app: App) -> SimpleNamespace:
    return define(backend_app)


def next_note(t: SimpleNamespace) -> tuple[str, Any]:
    return t.notes.get(timeout=TIMEOUT)  # type: ignore[no-any-return]


# -- link / link_error ----------------------------------------------------------------


def test_link_gets_the_result_and_link_error_is_not_sent_on_success(
    backend_app: App, t: SimpleNamespace
) -> None:
    with backend_app.worker(concurrency=4):
        result = t.add.apply_async(
            (2, 3), link=[t.note.s("ok"), t.note.si("fixed", "si")], link_error=t.note.s("err")
        )
        assert result.get(timeout=TIMEOUT) == 5
        got = sorted([next_note(t), next_note(t)])
    assert got == [("ok", 5), ("si", "fixed")]
    assert t.notes.empty()
    assert t.ran["note"] == 2


def test_link_error_gets_the_failed_task_id_once_after_its_retries(
    backend_app: App, t: SimpleNamespace
) -> None:
    with backend_app.worker(concurrency=4):
        result = t.boom.apply_async((7,), link=t.note.s("ok"), link_error=t.note.s("err"))
        with pytest.raises(TaskFailed):
            result.get(timeout=TIMEOUT)
        assert next_note(t) == ("err", result.id)
        # Sent once the task failed for good: the retry (attempt 1) sent nothing.
        assert t.ran["boom"] == 2
        t.add.delay(0, 0).get(timeout=TIMEOUT)
    assert t.notes.empty()
    assert t.ran["note"] == 1


def test_callbacks_come_through_every_way_of_sending(backend_app: App, t: SimpleNamespace) -> None:
    with backend_app.worker(concurrency=4):
        backend_app.send_task("add", (1, 1), link=t.note.s("send_task"))
        t.add.s(1, 2).set(link=t.note.s("set")).apply_async()
        t.boom.s(3).on_error(t.note.s("on_error")).apply_async()
        backend_app.enqueue_many([t.add.s(2, 2).set(link=t.note.s("many"))])
        t.add.with_options(link=t.note.s("with_options")).delay(3, 3)
        t.add.s(4, 4).link(t.note.s("link")).apply_async()
        got = dict(next_note(t) for _ in range(6))
    assert got["send_task"] == 2
    assert got["set"] == 3
    assert isinstance(got["on_error"], str)
    assert backend_app.result(got["on_error"]).status is TaskStatus.FAILED
    assert got["many"] == 4
    assert got["with_options"] == 6
    assert got["link"] == 8


def test_aapply_async_takes_links(backend_app: App, t: SimpleNamespace) -> None:
    async def send() -> str:
        result = await t.add.aapply_async((4, 4), link=t.note.s("async"))
        return result.id

    with backend_app.worker(concurrency=2):
        task_id = asyncio.run(send())
        assert next_note(t) == ("async", 8)
    assert backend_app.get_task(task_id).status is TaskStatus.SUCCEEDED


def test_a_chain_step_with_a_link_and_a_link_that_is_a_chain(
    backend_app: App, t: SimpleNamespace
) -> None:
    with backend_app.worker(concurrency=4):
        result = chain(t.add.s(1, 1).set(link=t.note.s("step")), t.mul.s(3)).apply_async()
        assert result.get(timeout=TIMEOUT) == 6
        assert next_note(t) == ("step", 2)
        t.add.apply_async((1, 2), link=chain(t.mul.s(2), t.add.s(1), t.note.s("chained")))
        assert next_note(t) == ("chained", 7)
        t.add.apply_async((1, 1), link=group(t.note.s("g1"), t.note.s("g2")))
        assert sorted([next_note(t), next_note(t)]) == [("g1", 2), ("g2", 2)]
        body = t.tsum.s().set(link=t.note.s("body"))
        assert chord([t.add.s(1, 1), t.add.s(2, 2)], body).apply_async().get(timeout=TIMEOUT) == 6
        assert next_note(t) == ("body", 6)


def test_a_link_that_does_not_fit_the_callback_is_refused_when_the_task_is_sent(
    backend_app: App, t: SimpleNamespace
) -> None:
    with pytest.raises(TypeError, match="link"):
        t.add.apply_async((1, 1), link="note")
    with pytest.raises(TypeError, match="link_error"):
        t.add.s(1, 1).set(link_error=[t.note.s("x"), 3])
    with pytest.raises(TypeError, match="link"):
        backend_app.send_task("add", (1, 1), link=print)


# -- lineage --------------------------------------------------------------------------


def test_a_task_sent_on_its_own_has_no_root_or_parent(backend_app: App, t: SimpleNamespace) -> None:
    with backend_app.worker(concurrency=2) as w:
        events = w.subscribe(buffer=10)
        result = t.add.delay(1, 1)
        assert result.get(timeout=TIMEOUT) == 2
        event = events.get(timeout=TIMEOUT)
    assert t.lineage[result.id] == (None, None)
    info = backend_app.get_task(result.id)
    assert (info.root_id, info.parent_id) == (None, None)
    assert (event.root_id, event.parent_id) == (None, None)


def test_a_task_sent_from_a_task_has_it_as_parent_and_root(
    backend_app: App, t: SimpleNamespace
) -> None:
    with backend_app.worker(concurrency=2) as w:
        events = w.subscribe(buffer=10)
        outer = t.spawn.delay(5)
        inner_id = outer.get(timeout=TIMEOUT)
        assert backend_app.result(inner_id).get(timeout=TIMEOUT) == 6
        finished = {e.task_id: e for e in (events.get(timeout=TIMEOUT) for _ in range(2))}
    assert t.lineage[inner_id] == (outer.id, outer.id)
    info = backend_app.get_task(inner_id)
    assert (info.root_id, info.parent_id) == (outer.id, outer.id)
    assert (finished[inner_id].root_id, finished[inner_id].parent_id) == (outer.id, outer.id)


def test_a_canvas_applied_from_a_task_hangs_below_it(backend_app: App, t: SimpleNamespace) -> None:
    with backend_app.worker(concurrency=2):
        outer = t.spawn_chain.delay(3)
        inner = backend_app.chain_result(outer.get(timeout=TIMEOUT))
        assert inner.get(timeout=TIMEOUT) == 8
    first, second = (s.id for s in inner.steps)
    assert t.lineage[first] == (outer.id, outer.id)
    assert t.lineage[second] == (outer.id, first)


def test_lineage_through_a_chain_a_group_a_chord_and_a_callback(
    backend_app: App, t: SimpleNamespace
) -> None:
    with backend_app.worker(concurrency=4):
        c = chain(t.add.s(1, 1), t.mul.s(2), t.add.s(3)).apply_async()
        assert c.get(timeout=TIMEOUT) == 7
        g = group(t.add.s(1, 1), t.add.s(2, 2)).apply_async()
        assert g.get(timeout=TIMEOUT) == [2, 4]
        ch = chord([t.add.s(1, 1), t.add.s(2, 2)], t.tsum.s()).apply_async()
        assert ch.get(timeout=TIMEOUT) == 6
        linked = t.add.apply_async((1, 1), link=chain(t.mul.s(2), t.note.s("lineage")))
        assert next_note(t) == ("lineage", 4)
    first, second, third = (s.id for s in c.steps)
    assert t.lineage[first] == (first, None)
    assert t.lineage[second] == (first, first)
    assert t.lineage[third] == (first, second)
    assert backend_app.get_task(third).parent_id == second
    assert backend_app.get_task(third).root_id == first

    m0, m1 = (r.id for r in g.results)
    assert t.lineage[m0] == (m0, None)
    assert t.lineage[m1] == (m0, None)

    h0, h1 = (r.id for r in ch.header.results)
    body = ch.body.id
    root, parent = t.lineage[body]
    assert root == h0
    assert parent in (h0, h1)  # the header member that completed the chord

    callback_ids = [tid for tid, (r, p) in t.lineage.items() if p == linked.id]
    assert len(callback_ids) == 1
    (mul2,) = callback_ids
    assert t.lineage[mul2] == (linked.id, linked.id)
    after = [tid for tid, (_, p) in t.lineage.items() if p == mul2]
    assert len(after) == 1 and t.lineage[after[0]] == (linked.id, mul2)


# -- partial arguments ----------------------------------------------------------------


def test_apply_async_args_go_to_the_tasks_that_start_the_canvas(
    backend_app: App, t: SimpleNamespace
) -> None:
    with backend_app.worker(concurrency=4):
        assert chain(t.add.s(2), t.mul.s(4)).apply_async(args=(2,)).get(timeout=TIMEOUT) == 16
        assert (
            chain(t.add.s(), t.mul.s(4)).apply_async(kwargs={"x": 1, "y": 2}).get(timeout=TIMEOUT)
            == 12
        )
        assert group(t.add.s(1), t.add.s(2), t.add.si(5, 5)).apply_async(args=(10,)).get(
            timeout=TIMEOUT
        ) == [11, 12, 10]
        assert (
            chord([t.add.s(1), t.add.s(2)], t.tsum.s()).apply_async(args=(10,)).get(timeout=TIMEOUT)
            == 23
        )
        assert chain(t.add.s(1), t.mul.s(3)).delay(4).get(timeout=TIMEOUT) == 15


# -- cancel ---------------------------------------------------------------------------


def test_group_cancel_stops_the_running_member_and_the_queued_ones_never_run(
    backend_app: App, t: SimpleNamespace
) -> None:
    with backend_app.worker(concurrency=1):
        result = group(t.stoppable.s(1), t.add.s(1, 1), t.add.s(2, 2)).apply_async()
        assert t.entered.wait(TIMEOUT)
        assert result.cancel() == 3
        assert t.stopped.wait(TIMEOUT)  # the running member saw its cancel
        t.mul.delay(1, 1).get(timeout=TIMEOUT)  # sent after: the queued members came first
        statuses = result.statuses()
        assert result.cancel() == 0  # nothing left to cancel
    assert t.ran["add"] == 0
    assert set(statuses.values()) == {TaskStatus.CANCELLED}
    assert result.status is TaskStatus.CANCELLED
    with pytest.raises(TaskCancelled):
        result.get(timeout=TIMEOUT)


def test_chain_cancel_stops_the_running_step_and_never_sends_the_rest(
    backend_app: App, t: SimpleNamespace
) -> None:
    with backend_app.worker(concurrency=2):
        result = chain(t.stoppable.s(1), t.add.s(1), group(t.add.s(2), t.add.s(3))).apply_async()
        assert t.entered.wait(TIMEOUT)
        assert result.cancel() == 4  # the running step, the next one and the two members
        assert t.stopped.wait(TIMEOUT)
        with pytest.raises(TaskCancelled):
            result.get(timeout=TIMEOUT)
        t.mul.delay(1, 1).get(timeout=TIMEOUT)
    assert t.ran["add"] == 0
    assert result.status is TaskStatus.CANCELLED
    assert result.steps[0].status is TaskStatus.CANCELLED
    assert result.steps[1].status is TaskStatus.CANCELLED
    assert set(result.steps[2].statuses().values()) == {TaskStatus.CANCELLED}
    assert backend_app.get_task(result.steps[1].id).name == "add"
