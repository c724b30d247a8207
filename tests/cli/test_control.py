"""The stop policy, connecting and the foreground loop, in-process on the memory broker.

Signals here are real (sent to this process), but the worker is stopped by its own task, so
nothing waits on the wall clock except the loop's short idle check.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading

import pytest

from taskflow import App
from taskflow.brokers.memory import MemoryBroker
from taskflow.errors import BrokerError
from taskflow.worker.foreground import EXIT_CRASHED, connect, run_foreground, serve
from taskflow.worker.signals import StopControl, StopPolicy

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")


def test_the_first_sigterm_is_graceful_and_a_later_sigint_is_hard() -> None:
    policy = StopPolicy()

    assert policy.on_signal(signal.SIGTERM) == "graceful"
    assert policy.on_signal(signal.SIGTERM) is None
    assert policy.on_signal(signal.SIGINT) == "hard"
    assert policy.on_signal(signal.SIGINT) is None
    assert policy.stopping


def test_two_sigints_are_graceful_then_hard() -> None:
    policy = StopPolicy()

    assert not policy.stopping
    assert [policy.on_signal(signal.SIGINT) for _ in range(2)] == ["graceful", "hard"]


def test_a_requested_stop_counts_like_a_signal() -> None:
    policy = StopPolicy()

    assert policy.request("graceful") == "graceful"
    assert policy.request("graceful") is None
    assert policy.on_signal(signal.SIGINT) == "hard"
    assert policy.request("hard") is None


def test_signals_are_recorded_and_handlers_restored_afterwards() -> None:
    previous = signal.getsignal(signal.SIGTERM)
    with StopControl() as control:
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)

        actions = control.wait(5.0)

        assert actions == [(signal.SIGTERM, "graceful"), (signal.SIGINT, "hard")]
        assert control.wait(0.0) == []
    assert signal.getsignal(signal.SIGTERM) is previous


def test_sigterm_from_a_task_stops_the_foreground_worker_with_status_0(app: App) -> None:
    @app.task
    def ask_to_stop() -> None:
        os.kill(os.getpid(), signal.SIGTERM)

    ask_to_stop.delay()
    with StopControl() as control:
        worker = app.worker(concurrency=1)

        assert run_foreground(worker, control, grace=5.0) == 0

    assert worker.counts.succeeded == 1


def test_a_worker_whose_supervisor_is_gone_stops_by_itself(app: App) -> None:
    with StopControl() as control:
        worker = app.worker(concurrency=1)

        # No process has pid 0 as its parent: the supervisor counts as gone at once.
        assert run_foreground(worker, control, grace=5.0, supervisor_pid=0) == 0

    assert control.policy.state == "graceful"


class FakeRunner:
    """Stands in for a worker: records stops; ``dies`` sets ``fatal`` when it starts."""

    def __init__(self, dies: BaseException | None = None) -> None:
        self.fatal: BaseException | None = None
        self.dies = dies
        self.stops: list[str] = []

    def start(self) -> None:
        self.fatal = self.dies

    def stop(self, timeout: float = 30.0) -> None:
        self.stops.append("graceful")

    def stop_now(self) -> None:
        self.stops.append("hard")


def test_a_runner_whose_stage_died_is_stopped_with_the_crash_status() -> None:
    runner = FakeRunner(dies=RuntimeError("fetch is broken"))
    with StopControl() as control:
        assert run_foreground(runner, control, grace=5.0) == EXIT_CRASHED

    assert runner.stops == ["graceful"]


def test_sigterm_after_a_crash_still_ends_with_the_crash_status() -> None:
    runner = FakeRunner(dies=RuntimeError("fetch is broken"))
    with StopControl() as control:
        os.kill(os.getpid(), signal.SIGTERM)  # handled in the same pass that sees the crash

        assert run_foreground(runner, control, grace=5.0) == EXIT_CRASHED

    assert runner.stops == ["graceful"]


class UnreachableBroker(MemoryBroker):
    """A broker whose server never answers."""

    def __init__(self) -> None:
        super().__init__()
        self.attempts = 0

    async def connect(self) -> None:
        self.attempts += 1
        raise BrokerError("memory broker is away")


def test_connecting_retries_with_a_warning_then_gives_up(
    caplog: pytest.LogCaptureFixture,
) -> None:
    broker = UnreachableBroker()
    with App("away", broker=broker) as app, StopControl() as control:
        with caplog.at_level(logging.WARNING, "taskflow.cli"):
            with pytest.raises(BrokerError) as err:
                connect(app.kernel, control, timeout=0.8)

    assert broker.attempts >= 2
    assert str(err.value).startswith("cannot connect to memory://: gave up after 0.8s (")
    assert str(err.value).endswith("; last error: memory broker is away")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == broker.attempts - 1
    assert warnings[0].startswith("cannot connect to memory:// (attempt 1: memory broker is away)")


def test_a_stop_signal_while_connecting_ends_the_run_cleanly() -> None:
    runner = FakeRunner()
    with App("away", broker=UnreachableBroker()) as app, StopControl() as control:
        os.kill(os.getpid(), signal.SIGTERM)

        assert serve(app.kernel, runner, control, grace=5.0, connect_timeout=60.0) == 0

    assert runner.stops == ["hard"]  # it never started: this only marks it stopped


def test_outside_the_main_thread_no_handlers_are_installed() -> None:
    previous = signal.getsignal(signal.SIGTERM)
    seen: list[object] = []

    def enter() -> None:
        with StopControl():
            seen.append(signal.getsignal(signal.SIGTERM))

    thread = threading.Thread(target=enter)
    thread.start()
    thread.join()

    assert seen == [previous]
