"""``Task.with_options``: per-call options with the arguments typed like ``delay``'s."""

from __future__ import annotations

import asyncio
import inspect
from typing import Any

import pytest

from taskflow import App, FakeClock, PayloadError, TaskStatus
from taskflow.codec import decode_envelope
from taskflow.task import CALL_OPTIONS, CallOptions, Task
from taskflow.testing import drain


def queued_bodies(app: App, queue: str) -> list[bytes]:
    return app.kernel.call(app.broker.peek(queue, 100))


def test_options_reach_the_envelope_like_apply_async() -> None:
    with App("sender", default_retries=1, default_timeout=50.0) as app:

        @app.task(priority=2, retries=3)
        def add(x: int, y: int) -> int:
            return x + y

        urgent = add.with_options(
            queue="fast", priority=9, retries=0, timeout=1.5, headers={"tenant": "acme"}
        )
        first = urgent.delay(2, 3)
        second = urgent.delay(x=4, y=5)
        [one, two] = [decode_envelope(b) for b in queued_bodies(app, "fast")]

    assert (one.id, one.args, one.kwargs) == (first.id, [2, 3], {})
    assert (two.id, two.args, two.kwargs) == (second.id, [], {"x": 4, "y": 5})
    for env in (one, two):
        assert (env.queue, env.priority, env.max_retries, env.timeout) == ("fast", 9, 0, 1.5)
        assert env.headers == {"tenant": "acme"}


def test_a_sender_runs_its_task_and_returns_a_typed_result(fake_app: App) -> None:
    @fake_app.task
    def add(x: int, y: int) -> int:
        return x + y

    handle = add.with_options(countdown=30).delay(2, 3)
    assert handle.status is TaskStatus.SCHEDULED
    assert isinstance(fake_app.clock, FakeClock)
    fake_app.clock.advance(30)
    assert drain(fake_app) == 1
    assert handle.get(timeout=5) == 5


def test_adelay_sends_from_async_code(app: App) -> None:
    @app.task(queue="io")
    def echo(text: str) -> str:
        return text

    async def produce() -> str:
        handle = await echo.with_options(priority=7).adelay("hi")
        return handle.id

    task_id = asyncio.run(produce())
    [env] = [decode_envelope(b) for b in queued_bodies(app, "io")]
    assert (env.id, env.priority, env.args) == (task_id, 7, ["hi"])


def test_an_unknown_option_is_refused_naming_the_task(app: App) -> None:
    @app.task(name="shop.ship")
    def ship(order: str) -> None: ...

    loose: dict[str, Any] = {"prioirty": 9}
    with pytest.raises(ValueError, match=r"shop\.ship: unknown option\(s\): prioirty"):
        ship.with_options(**loose)


def test_arguments_are_checked_at_send_like_delay(app: App) -> None:
    @app.task(name="geo.step")
    def step(steps: int) -> int:
        return steps

    with pytest.raises(PayloadError, match=r"geo\.step.*steps.*int"):
        step.with_options(priority=1).delay("three")  # type: ignore[arg-type]
    assert queued_bodies(app, "default") == []


def test_with_options_takes_exactly_the_apply_async_options() -> None:
    assert CallOptions.__optional_keys__ == CALL_OPTIONS
    assert not CallOptions.__required_keys__


@pytest.mark.parametrize("method", [Task.apply_async, Task.aapply_async])
def test_apply_async_spells_out_exactly_the_call_options(method: Any) -> None:
    # The keywords are written out for API.md and read back by name: they must be the
    # TypedDict's keys, no more and no fewer.
    keywords = {
        p.name
        for p in inspect.signature(method).parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    }
    assert keywords == CALL_OPTIONS


def test_repr_names_header_keys_but_not_their_values(app: App) -> None:
    @app.task(name="shop.ship")
    def ship(order: str) -> None: ...

    sender = ship.with_options(priority=3, headers={"authorization": "Bearer s3cret"})
    assert repr(sender) == "<TaskSender shop.ship(priority=3, headers=[authorization])>"
