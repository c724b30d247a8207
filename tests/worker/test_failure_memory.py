"""A task that fails leaves nothing for the garbage collector: its arguments are freed as
soon as its outcome is written, as a success's are.

An exception's traceback holds the frames it went through, the body's with its arguments;
those frames and the worker's own (the attempt, a sync body's run) referred back to the
exception, so every failure left a cycle that only a collection could free (and the
thread pool kept the run it was handed last, finished or not). A foreground worker collects
rarely (``--gc-threshold``), so a run of failures with large arguments would hold them all
until then.
"""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from taskflow import App

_seen: list[weakref.ref[Payload]] = []


@dataclass
class Payload:
    """A task argument the body can hold a weak reference to."""

    data: str


@pytest.fixture
def no_collection() -> Iterator[None]:
    """The collector off (what a collection would free stays), back on after."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
        _seen.clear()


@pytest.mark.parametrize("kind", ["sync", "async"])
@pytest.mark.parametrize("retries", [0, 1])
def test_the_arguments_of_a_failed_task_are_freed_without_a_collection(
    fake_app: App, no_collection: None, kind: str, retries: int
) -> None:
    if kind == "sync":

        @fake_app.task(name="mem.fails", retries=retries)
        def fails(payload: Payload) -> None:
            _seen.append(weakref.ref(payload))
            raise ValueError("the task failed")

    else:

        @fake_app.task(name="mem.fails", retries=retries)
        async def fails(payload: Payload) -> None:
            _seen.append(weakref.ref(payload))
            raise ValueError("the task failed")

    results = [fails.delay(Payload("x" * 1000)) for _ in range(20)]
    worker = fake_app.worker(concurrency=4)
    worker.run_until_idle()
    fake_app.kernel.clock.advance(60)  # type: ignore[attr-defined]
    worker.run_until_idle()  # the retries, if any

    assert len(_seen) == 20 * (retries + 1)
    assert [ref() for ref in _seen] == [None] * len(_seen)
    assert all(r.info().status == "failed" for r in results)
