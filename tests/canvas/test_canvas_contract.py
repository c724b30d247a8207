"""Canvas behaviour every backend must show: groups, chains, chords and their nesting.

Each test runs on every backend pair registered for the contract suites, with real
in-process workers; waiting is the push-based ``get(timeout=...)``, never a sleep.
"""

from __future__ import annotations

import threading
from collections import Counter
from types import SimpleNamespace

import pytest

from taskflow import (
    App,
    ChainResult,
    ChordResult,
    GroupResult,
    NotFound,
    TaskFailed,
    TaskStatus,
    chain,
    chord,
    group,
)

TIMEOUT = 20.0


def define(app: App) -> SimpleNamespace:
    """Register the tasks the tests compose; ``ran`` counts runs per task name."""
    ran: Counter[str] = Counter()
    lock = threading.Lock()
    gate = threading.Event()
    entered = threading.Event()

    def count(name: str) -> None:
        with lock:
            ran[name] += 1

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

    @app.task(name="wait_gate")
    def wait_gate(x: int) -> int:
        entered.set()
        gate.wait(TIMEOUT)
        return x

    return SimpleNamespace(
        add=add,
        mul=mul,
        tsum=tsum,
        boom=boom,
        wait_gate=wait_gate,
        ran=ran,
        gate=gate,
        entered=entered,
    )


@pytest.fixture
def t(backend_app: App) -> SimpleNamespace:
    return define(backend_app)


def test_a_group_returns_its_values_in_submission_order(
    backend_app: App, t: SimpleNamespace
) -> None:
    with backend_app.worker(concurrency=8):
        result = group(t.add.s(i, i) for i in range(25)).apply_async()
        assert isinstance(result, GroupResult)
        assert result.get(timeout=TIMEOUT) == [2 * i for i in range(25)]


def test_group_statuses_show_each_members_final_status_also_when_looked_up_later(
    backend_app: App, t: SimpleNamespace
) -> None:
    with backend_app.worker(concurrency=4):
        result = group(t.add.s(1, 1), t.boom.s(2), t.add.s(3, 3)).apply_async()
        values = result.get(timeout=TIMEOUT, propagate=False)
    assert values[0] == 2 and values[2] == 6
    assert isinstance(values[1], TaskFailed)
    ids = [r.id for r in result.results]
    expected = {
        ids[0]: TaskStatus.SUCCEEDED,
        ids[1]: TaskStatus.FAILED,
        ids[2]: TaskStatus.SUCCEEDED,
    }
    assert result.statuses() == expected
    again = backend_app.group_result(result.id)
    assert again.statuses() == expected
    assert list(again.statuses()) == ids  # submission order
    assert again.status is TaskStatus.FAILED
    assert t.ran["boom"] == 2  # the member failed after its retry


def test_a_chain_passes_each_result_as_the_next_steps_first_argument(
    backend_app: App, t: SimpleNamespace
) -> None:
    with backend_app.worker(concurrency=4):
        result = (t.add.s(2, 2) | t.mul.s(4) | t.mul.s(8)).apply_async()
        assert isinstance(result, ChainResult)
        assert result.get(timeout=TIMEOUT) == 128
        assert (
            chain(t.add.s(1, 1), t.add.si(10, 20), t.mul.s(2)).apply_async().get(timeout=TIMEOUT)
            == 60
        )  # si ignores the parent's value
    looked_up = backend_app.chain_result(result.id)
    assert looked_up.current is None
    assert [s.id for s in looked_up.finished_steps()] == [s.id for s in result.steps]
    assert looked_up.status is TaskStatus.SUCCEEDED


def test_a_chain_stops_at_the_first_failed_step_and_cancels_the_rest(
    backend_app: App, t: SimpleNamespace
) -> None:
    with backend_app.worker(concurrency=4):
        result = chain(t.add.s(1, 1), t.boom.s(), t.mul.s(3), t.add.s(4)).apply_async()
        with pytest.raises(TaskFailed) as failure:
            result.get(timeout=TIMEOUT)
        failing = result.steps[1]
        assert failure.value.task_id == failing.id
        assert "boom 2" in failure.value.message
        assert t.ran["boom"] == 2  # first run + one retry, then the chain stopped
        later = result.steps[2:]
        assert all(s.status is TaskStatus.CANCELLED for s in later)
    assert t.ran["mul"] == 0
    assert result.status is TaskStatus.FAILED


def test_a_chord_body_runs_once_with_every_header_result(
    backend_app: App, t: SimpleNamespace
) -> None:
    with backend_app.worker(concurrency=8), backend_app.worker(concurrency=8):
        result = chord([t.add.s(i, i) for i in range(40)], t.tsum.s()).apply_async()
        assert isinstance(result, ChordResult)
        assert result.get(timeout=TIMEOUT) == sum(2 * i for i in range(40))
        assert result.header.get(timeout=TIMEOUT) == [2 * i for i in range(40)]
    assert t.ran["tsum"] == 1
    assert backend_app.chain_result(result.id).last.id == result.body.id


def test_a_failed_header_member_fails_the_chord_and_the_body_never_runs(
    backend_app: App, t: SimpleNamespace
) -> None:
    with backend_app.worker(concurrency=4):
        result = chord([t.add.s(1, 1), t.boom.s(7), t.add.s(2, 2)], t.tsum.s()).apply_async()
        with pytest.raises(TaskFailed) as failure:
            result.get(timeout=TIMEOUT)
        assert failure.value.task_id == result.header.results[1].id
        result.header.get(timeout=TIMEOUT, propagate=False)  # the others still finish
        assert result.body.status is TaskStatus.CANCELLED
    assert t.ran["tsum"] == 0


def test_a_group_inside_a_chain_feeds_each_member_and_the_next_step_gets_the_list(
    backend_app: App, t: SimpleNamespace
) -> None:
    with backend_app.worker(concurrency=4):
        result = chain(
            t.add.s(1, 1), group(t.add.s(10), t.mul.s(10), t.add.si(5, 5)), t.tsum.s()
        ).apply_async()
        assert result.get(timeout=TIMEOUT) == 12 + 20 + 10
        assert result.steps[1].get(timeout=TIMEOUT) == [12, 20, 10]


def test_a_chain_inside_a_group_gives_that_chains_last_value(
    backend_app: App, t: SimpleNamespace
) -> None:
    with backend_app.worker(concurrency=4):
        result = group(
            t.add.s(1, 2) | t.mul.s(10), t.add.s(5, 5), chain(t.add.s(0, 1), t.add.s(1), t.add.s(1))
        ).apply_async()
        assert result.get(timeout=TIMEOUT) == [30, 10, 3]
        assert isinstance(backend_app.group_result(result.id).results[0], ChainResult)


def test_a_chord_body_may_be_a_chain(backend_app: App, t: SimpleNamespace) -> None:
    with backend_app.worker(concurrency=4):
        result = chord([t.add.s(i, 1) for i in range(5)], t.tsum.s() | t.mul.s(2)).apply_async()
        assert result.get(timeout=TIMEOUT) == 2 * sum(i + 1 for i in range(5))
    assert t.ran["tsum"] == 1


def test_chain_result_shows_the_current_step_and_the_finished_ones(
    backend_app: App, t: SimpleNamespace
) -> None:
    with backend_app.worker(concurrency=2):
        result = chain(t.add.s(1, 1), t.wait_gate.s(), t.add.s(1)).apply_async()
        assert t.entered.wait(TIMEOUT)
        seen = backend_app.chain_result(result.id)
        assert seen.current == 1
        assert [s.id for s in seen.finished_steps()] == [result.steps[0].id]
        assert seen.statuses()[result.steps[1].id] is TaskStatus.RUNNING
        t.gate.set()
        assert result.get(timeout=TIMEOUT) == 3


def test_looking_up_an_unknown_canvas_raises_not_found(backend_app: App) -> None:
    with pytest.raises(NotFound):
        backend_app.group_result("no-such-group")
    with pytest.raises(NotFound):
        backend_app.chain_result("no-such-chain")
