"""Which event loop an app's loop thread runs: uvloop's where it is installed, asyncio's
when asked (``TASKFLOW_LOOP``, ``taskflow worker --loop``), and clear errors otherwise."""

from __future__ import annotations

import asyncio
import sys

import pytest
import uvloop

from taskflow import App
from taskflow.errors import ConfigError
from taskflow.kernel import LOOP_ENV, LoopThread, loop_kind
from taskflow.kernel.loop import new_event_loop
from taskflow.testing import drain


@pytest.fixture(autouse=True)
def no_choice_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(LOOP_ENV, raising=False)


@pytest.fixture
def no_uvloop(monkeypatch: pytest.MonkeyPatch) -> None:
    """uvloop cannot be found or imported, as on a platform it does not build for."""
    monkeypatch.setitem(sys.modules, "uvloop", None)  # type: ignore[arg-type]
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None)


def running_loop(thread: LoopThread) -> asyncio.AbstractEventLoop:
    async def current() -> asyncio.AbstractEventLoop:
        return asyncio.get_running_loop()

    try:
        return thread.call(current())
    finally:
        thread.close()


def test_auto_is_uvloop_where_it_is_installed() -> None:
    assert loop_kind() == "uvloop"
    assert loop_kind("auto") == "uvloop"
    assert isinstance(running_loop(LoopThread("t")), uvloop.Loop)


def test_auto_is_asyncios_loop_where_uvloop_is_missing(no_uvloop: None) -> None:
    assert loop_kind("auto") == "asyncio"
    loop = running_loop(LoopThread("t"))
    assert isinstance(loop, asyncio.BaseEventLoop)
    assert type(loop).__module__.startswith("asyncio")


def test_uvloop_asked_for_where_it_is_missing_is_a_config_error(no_uvloop: None) -> None:
    with pytest.raises(ConfigError, match="--loop asks for uvloop, which is not installed"):
        loop_kind("uvloop")


def test_asyncio_asked_for_runs_asyncios_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    thread = LoopThread("t")
    thread.use("asyncio")
    assert not isinstance(running_loop(thread), uvloop.Loop)
    monkeypatch.setenv(LOOP_ENV, "ASYNCIO")  # the environment's choice, in any case
    assert loop_kind() == "asyncio"
    assert not isinstance(running_loop(LoopThread("t")), uvloop.Loop)


def test_a_bad_choice_names_where_it_came_from(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match=r"--loop must be one of auto, asyncio, uvloop"):
        loop_kind("trio")
    monkeypatch.setenv(LOOP_ENV, "tokio")
    with pytest.raises(ConfigError, match=r"TASKFLOW_LOOP must be one of .* \(got 'tokio'\)"):
        LoopThread("t").loop  # noqa: B018 -- starting the loop resolves the choice


def test_the_choice_can_change_until_the_loop_starts() -> None:
    thread = LoopThread("t")
    thread.use("asyncio")
    assert thread.kind == "asyncio"
    thread.use("uvloop")
    try:
        assert isinstance(thread.loop, uvloop.Loop)
        assert thread.kind == "uvloop"
        thread.use("auto")  # the same kind: nothing to change
        with pytest.raises(ConfigError, match=r"event loop \(uvloop\) already runs"):
            thread.use("asyncio")
    finally:
        thread.close()
    thread.use("asyncio")  # closed: the next start makes a new loop
    assert not isinstance(running_loop(thread), uvloop.Loop)


def test_an_app_sends_and_its_worker_runs_on_either_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    for kind in ("asyncio", "uvloop"):
        monkeypatch.setenv(LOOP_ENV, kind)
        with App("loops", broker="memory://", results="memory://") as app:

            @app.task(name="double")
            async def double(x: int) -> list[object]:
                loop = asyncio.get_running_loop()
                return [x * 2, isinstance(loop, uvloop.Loop)]

            result = double.delay(21)
            assert drain(app) == 1
            assert result.get(timeout=5) == [42, kind == "uvloop"]
            assert app.kernel.loop.kind == kind


def test_new_event_loop_makes_the_loop_an_app_would(monkeypatch: pytest.MonkeyPatch) -> None:
    # The contract suite's loop comes from here, so that it runs on either loop.
    for env, kind in (("", uvloop.Loop), ("asyncio", asyncio.BaseEventLoop)):
        monkeypatch.setenv(LOOP_ENV, env)
        loop = new_event_loop()
        try:
            assert isinstance(loop, kind)
            assert loop.run_until_complete(asyncio.sleep(0, "ran")) == "ran"
        finally:
            loop.close()
    loop = new_event_loop("asyncio")  # asked for: whatever the environment says
    try:
        assert not isinstance(loop, uvloop.Loop)
    finally:
        loop.close()
