"""The stop policy and the foreground loop, in-process on the memory broker.

Signals here are real (sent to this process), but the worker is stopped by its own task, so
nothing waits on the wall clock except the loop's short idle check.
"""

from __future__ import annotations

import os
import signal
import sys

import pytest

from taskflow import App
from taskflow.cli.supervisor import StopControl, StopPolicy, run_foreground

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

    assert worker.counts["succeeded"] == 1


def test_a_worker_whose_supervisor_is_gone_stops_by_itself(app: App) -> None:
    with StopControl() as control:
        worker = app.worker(concurrency=1)

        # No process has pid 0 as its parent: the supervisor counts as gone at once.
        assert run_foreground(worker, control, grace=5.0, supervisor_pid=0) == 0

    assert control.policy.state == "graceful"
