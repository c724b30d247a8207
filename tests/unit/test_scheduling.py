"""``--scheduling batch``: the threads of the process under ``SCHED_BATCH`` while a worker
serves, threads started later inheriting it, the former policy given back; threads that
someone gave another policy left alone."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

from taskflow import App
from taskflow.worker import scheduling
from taskflow.worker.scheduling import check_scheduling, command_line_default, use_batch

pytestmark = pytest.mark.skipif(not hasattr(os, "SCHED_BATCH"), reason="Linux only")


@contextmanager
def parked_thread(before: Callable[[], None] = lambda: None) -> Iterator[int]:
    """A thread that runs ``before`` then waits until the block ends; yields its id."""
    ready, done = threading.Event(), threading.Event()
    tid: list[int] = []

    def park() -> None:
        before()
        tid.append(threading.get_native_id())
        ready.set()
        done.wait()

    thread = threading.Thread(target=park)
    thread.start()
    try:
        assert ready.wait(10)
        yield tid[0]
    finally:
        done.set()
        thread.join()


def policy_of_a_thread_started_now() -> int:
    seen: list[int] = []
    thread = threading.Thread(target=lambda: seen.append(os.sched_getscheduler(0)))
    thread.start()
    thread.join()
    return seen[0]


def test_batch_puts_every_thread_under_it_and_release_gives_the_default_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    main = threading.get_native_id()
    assert os.sched_getscheduler(main) == os.SCHED_OTHER
    with parked_thread() as other:
        with caplog.at_level(logging.INFO, "taskflow.worker"):
            policy = use_batch()
        assert policy is not None
        assert f"worker process {os.getpid()} runs its threads under SCHED_BATCH" in caplog.text
        try:
            assert os.sched_getscheduler(main) == os.SCHED_BATCH
            assert os.sched_getscheduler(other) == os.SCHED_BATCH
            # A thread started since inherits it from the thread that starts it.
            assert policy_of_a_thread_started_now() == os.SCHED_BATCH
            assert {main, other} <= set(policy.switched)
        finally:
            policy.release()
        assert os.sched_getscheduler(main) == os.SCHED_OTHER
        assert os.sched_getscheduler(other) == os.SCHED_OTHER
    assert policy_of_a_thread_started_now() == os.SCHED_OTHER
    assert policy.switched == []


def test_a_thread_given_another_policy_keeps_it() -> None:
    def go_idle() -> None:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))

    with parked_thread(go_idle) as idle:
        policy = use_batch()
        assert policy is not None
        try:
            assert idle not in policy.switched
            assert os.sched_getscheduler(idle) == os.SCHED_IDLE
        finally:
            policy.release()
        assert os.sched_getscheduler(idle) == os.SCHED_IDLE


def test_a_process_whose_threads_all_have_another_policy_is_left_as_it_is(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    main = threading.get_native_id()
    monkeypatch.setattr(scheduling, "thread_ids", lambda: [main])  # whatever else runs here
    os.sched_setscheduler(main, os.SCHED_IDLE, os.sched_param(0))
    try:
        with caplog.at_level(logging.INFO, "taskflow.worker"):
            assert use_batch() is None
        assert os.sched_getscheduler(main) == os.SCHED_IDLE
        assert "the threads were given another policy; left as they are" in caplog.text
        assert "runs its threads under SCHED_BATCH" not in caplog.text
    finally:
        os.sched_setscheduler(main, os.SCHED_OTHER, os.sched_param(0))


def test_a_thread_that_ended_does_not_stop_the_release() -> None:
    with parked_thread() as gone:
        policy = use_batch()
    assert policy is not None
    assert gone in policy.switched
    policy.release()  # the parked thread ended before: no error
    assert os.sched_getscheduler(0) == os.SCHED_OTHER


def test_where_the_system_has_no_batch_policy_nothing_changes(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(scheduling, "supported", lambda: False)
    with caplog.at_level(logging.INFO, "taskflow.worker"):
        assert use_batch() is None
    assert "not supported on this platform" in caplog.text
    assert os.sched_getscheduler(0) == os.SCHED_OTHER
    assert command_line_default() == "normal"


def test_a_refused_call_leaves_the_policy_and_says_why(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def refuse(*_: object) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "sched_setscheduler", refuse)
    with caplog.at_level(logging.WARNING, "taskflow.worker"):
        assert use_batch() is None
    assert "the policy cannot be set" in caplog.text
    assert "Operation not permitted" in caplog.text


def test_the_command_line_chooses_batch_where_the_system_has_it() -> None:
    assert command_line_default() == "batch"


def test_choices_are_checked_and_the_unknown_one_named() -> None:
    assert check_scheduling("BATCH") == "batch"
    assert check_scheduling("normal") == "normal"
    with pytest.raises(ValueError, match="scheduling must be one of batch, normal, not 'fast'"):
        check_scheduling("fast")
    with pytest.raises(ValueError, match="scheduling must be one of batch, normal, not None"):
        check_scheduling(None)


def test_run_worker_refuses_an_unknown_policy_before_it_starts() -> None:
    with App("sched", broker="memory://") as app, pytest.raises(ValueError, match="scheduling"):
        app.run_worker(scheduling="fifo")
