"""Waiting for the outcome of a task declared ``store_result=False``: refused at once.

Its worker writes no record, so a wait could only end at its timeout, or never without
one. The handle of a task this process does not know waits as any other.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from taskflow import App, ConfigError, ResultTimeout, TaskStatus, chain, chord, group


def test_get_of_a_fire_and_forget_task_is_refused_at_once_naming_it(fake_app: App) -> None:
    @fake_app.task(name="shop.notify", store_result=False)
    def notify(n: int) -> int:
        return n

    result = notify.delay(1)
    assert fake_app.worker().run_until_idle() == 1
    started = time.monotonic()
    with pytest.raises(ConfigError) as info:
        result.get(timeout=5)
    assert time.monotonic() - started < 1  # not at the timeout
    assert f"shop.notify[{result.id}]" in str(info.value)
    assert "store_result=False" in str(info.value)
    with pytest.raises(ConfigError, match="store_result=False"):
        asyncio.run(result.aget(timeout=5))
    assert result.status is TaskStatus.PENDING  # nothing was stored: nothing is known


def test_a_group_with_a_fire_and_forget_member_refuses_to_wait(fake_app: App) -> None:
    @fake_app.task(name="shop.notify", store_result=False)
    def notify(n: int) -> int:
        return n

    @fake_app.task(name="shop.total")
    def total(n: int) -> int:
        return n

    result = group(total.s(1), notify.s(2)).apply_async()
    assert fake_app.worker().run_until_idle() == 2
    with pytest.raises(ConfigError, match=r"shop\.notify\["):
        result.get(timeout=5)
    assert result.results[0].get(timeout=5) == 1  # the stored member is there


def test_a_handle_by_id_alone_waits_as_for_any_task(fake_app: App) -> None:
    @fake_app.task(name="shop.notify", store_result=False)
    def notify(n: int) -> int:
        return n

    sent = notify.delay(1)
    fake_app.worker().run_until_idle()
    # Looked up by id, the task's name (and so its declaration) is not known here.
    with pytest.raises(ResultTimeout):
        fake_app.result(sent.id).get(timeout=0.05)


def test_a_task_that_stores_its_result_is_waited_for(fake_app: App) -> None:
    @fake_app.task(name="shop.total")
    def total(n: int) -> int:
        return n * 2

    result = total.delay(21)
    fake_app.worker().run_until_idle()
    assert result.get(timeout=5) == 42


def test_a_chain_and_a_chord_of_fire_and_forget_tasks_still_give_their_values(
    fake_app: App,
) -> None:
    @fake_app.task(name="shop.notify", store_result=False)
    def notify(n: int) -> int:
        return n

    @fake_app.task(name="shop.total")
    def total(values: list[int]) -> int:
        return sum(values)

    # Their own records, written by the canvas whatever the members declare.
    ended = chain(notify.s(1), notify.s()).apply_async()
    gathered = chord([notify.s(1), notify.s(2)], total.s()).apply_async()
    fake_app.worker().run_until_idle()
    assert ended.get(timeout=5) == 1
    assert gathered.get(timeout=5) == 3
