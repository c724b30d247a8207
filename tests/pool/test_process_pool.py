"""``pool="processes"``: sync bodies in child processes, with hard limits (real processes)."""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from taskflow import App, codec
from taskflow.errors import ConfigError, TaskCancelled, TaskFailed
from taskflow.worker import fetcher
from taskflow.worker.fetcher import SHORT_TASK
from taskflow.worker.procpool import locate_app
from tests.cli.helpers import alive, pids, wait_for

from . import poolapp
from .conftest import APP_PATH, PoolApp, children, driven_child
from .poolapp import declare

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX processes")


def test_sync_bodies_run_in_child_processes_and_coroutines_stay_in_the_worker(
    pool_app: PoolApp,
) -> None:
    app, tasks = pool_app

    @app.task(name="pool.where_async")
    async def where_async() -> int:
        return os.getpid()

    with app.worker(concurrency=2, pool="processes", app_path=APP_PATH):
        ran = {tasks["whoami"].delay(i).get(timeout=10) for i in range(6)}
        assert where_async.delay().get(timeout=10) == os.getpid()
        pool = {p.pid for p in children()}
        (entry,) = app.admin.workers()
        assert entry.pool == "processes"  # what operators see in the heartbeat

    assert os.getpid() not in ran
    assert ran <= pool
    assert len(pool) == 2  # concurrency children, no more


@pytest.mark.parametrize(
    ("task", "args", "exc_type", "message", "in_traceback"),
    [
        # Its own type and message, with the child's traceback.
        ("fail", ["no such order"], "LookupError", "no such order", "raise LookupError(message)"),
        # An exception whose __str__ fails is still the task's recorded failure.
        (
            "unprintable",
            [],
            "tests.pool.poolapp.Unprintable",
            "<exception str() failed: Unprintable>",
            "raise Unprintable",
        ),
        # StopIteration, as on the thread pool: a RuntimeError caused by it.
        (
            "first_of",
            [[]],
            "RuntimeError",
            "the task's body raised StopIteration",
            "return next(iter(items))",
        ),
    ],
)
def test_what_a_body_in_a_child_raises_fails_the_task_with_its_type_and_traceback(
    pool_app: PoolApp, task: str, args: list[Any], exc_type: str, message: str, in_traceback: str
) -> None:
    app, tasks = pool_app
    with app.worker(concurrency=1, pool="processes", app_path=APP_PATH):
        with pytest.raises(TaskFailed) as caught:
            tasks[task].delay(*args).get(timeout=10)
    assert (caught.value.exc_type, caught.value.message) == (exc_type, message)
    assert "in the child process" in caught.value.traceback
    assert in_traceback in caught.value.traceback


def test_sys_exit_in_a_child_fails_the_task_as_on_the_thread_pool_and_the_child_serves_on(
    pool_app: PoolApp,
) -> None:
    app, tasks = pool_app
    with app.worker(concurrency=1, pool="processes", app_path=APP_PATH):
        result = tasks["exits"].delay(2)
        with pytest.raises(TaskFailed) as caught:
            result.get(timeout=10)
        before = {p.pid for p in children()}
        after = tasks["whoami"].delay(1).get(timeout=10)

    assert (caught.value.exc_type, caught.value.message) == ("SystemExit", "2")
    assert result.info().attempts == 1  # not retried, not a lost child
    assert before == {after}  # the same child ran the next task


def test_a_body_in_a_child_that_returns_a_coroutine_has_it_run_there(pool_app: PoolApp) -> None:
    app, tasks = pool_app
    with app.worker(concurrency=1, pool="processes", app_path=APP_PATH):
        assert tasks["forgot"].delay().get(timeout=10) == 1


def test_time_limit_kills_a_body_blocked_in_c_and_the_worker_keeps_serving(
    pool_app: PoolApp, tmp_path: Path
) -> None:
    app, tasks = pool_app
    with app.worker(concurrency=1, pool="processes", app_path=APP_PATH):
        sent = time.monotonic()
        result = tasks["limited"].delay(str(tmp_path), 30.0)
        with pytest.raises(TaskFailed) as caught:
            result.get(timeout=10)
        took = time.monotonic() - sent

        # The next task runs, in the child that replaced the killed one.
        after = tasks["whoami"].delay(1).get(timeout=10)

    assert caught.value.exc_type == "taskflow.errors.TaskTimeout"
    assert "exceeded its 1.0s time limit" in caught.value.message
    assert took < 3.0
    (killed,) = pids(tmp_path, "started")
    assert not alive(killed)
    assert after != killed
    assert not pids(tmp_path, "finished")


def test_timeout_kills_the_child_too_on_the_process_pool(pool_app: PoolApp, tmp_path: Path) -> None:
    app, tasks = pool_app
    with app.worker(concurrency=1, pool="processes", app_path=APP_PATH):
        sent = time.monotonic()
        with pytest.raises(TaskFailed) as caught:
            tasks["timed"].delay(str(tmp_path), 30.0).get(timeout=10)
        took = time.monotonic() - sent
        (child,) = pids(tmp_path, "started")
        assert not alive(child)
    assert caught.value.exc_type == "taskflow.errors.TaskTimeout"
    assert "exceeded its 1.0s timeout" in caught.value.message
    assert took < 3.0


def test_a_retry_asked_for_in_a_child_is_honoured(pool_app: PoolApp) -> None:
    app, tasks = pool_app
    with app.worker(concurrency=1, pool="processes", app_path=APP_PATH):
        assert tasks["retry_once"].delay().get(timeout=10) == 2


def test_a_time_limit_follows_the_retry_policy(pool_app: PoolApp, tmp_path: Path) -> None:
    app, tasks = pool_app
    with app.worker(concurrency=1, pool="processes", app_path=APP_PATH):
        result = tasks["limited_retried"].delay(str(tmp_path), 30.0)
        with pytest.raises(TaskFailed) as caught:
            result.get(timeout=10)
        info = result.info()

    assert caught.value.exc_type == "taskflow.errors.TaskTimeout"
    assert info.attempts == 2
    assert len(pids(tmp_path, "started")) == 2  # each attempt in its own, killed, child


def test_the_thread_pool_ignores_time_limit(pool_app: PoolApp, tmp_path: Path) -> None:
    app, tasks = pool_app
    with app.worker(concurrency=1):
        # 1.5 s against a 1 s limit: only the process pool enforces time_limit.
        assert tasks["limited"].delay(str(tmp_path), 1.5).get(timeout=10) == os.getpid()


def test_cancelling_a_running_task_kills_its_child(pool_app: PoolApp, tmp_path: Path) -> None:
    app, tasks = pool_app
    with app.worker(concurrency=1, pool="processes", app_path=APP_PATH):
        result = tasks["sleep_in_c"].delay(str(tmp_path), 60.0)
        wait_for(lambda: bool(pids(tmp_path, "started")), 10, "the body to start")
        (child,) = pids(tmp_path, "started")

        assert result.cancel()
        with pytest.raises(TaskCancelled):
            result.get(timeout=10)
        wait_for(lambda: not alive(child), 3, "the child to be killed")
        assert tasks["whoami"].delay(2).get(timeout=10) != child
    assert not pids(tmp_path, "finished")


def test_a_child_that_keeps_dying_is_a_lost_delivery_counted_against_max_deliveries(
    tmp_path: Path,
) -> None:
    with App("pool-crash", broker="memory://?lease=0.5", max_deliveries=2) as app:
        tasks = declare(app)
        with app.worker(concurrency=1, pool="processes", app_path=APP_PATH):
            result = tasks["crash"].delay(str(tmp_path))
            with pytest.raises(TaskFailed) as caught:
                result.get(timeout=15)
            info = result.info()
            # The worker still serves, in a fresh child.
            assert tasks["whoami"].delay(3).get(timeout=10) not in pids(tmp_path, "started")

    # Two deliveries of the first attempt, each in its own child; retries are not spent.
    assert caught.value.exc_type == "taskflow.errors.WorkerLost"
    assert info.attempts == 1
    assert len(pids(tmp_path, "started")) == 2


def test_max_tasks_per_child_recycles_children_and_loses_nothing(pool_app: PoolApp) -> None:
    app, tasks = pool_app
    with app.worker(concurrency=2, pool="processes", app_path=APP_PATH, max_tasks_per_child=10):
        results = [tasks["whoami"].delay(i) for i in range(100)]
        ran = [r.get(timeout=30) for r in results]

    assert len(ran) == 100
    assert len(set(ran)) >= 10
    assert max(ran.count(pid) for pid in set(ran)) <= 10


def test_short_bodies_deepen_the_process_pools_prefetch_buffer(
    pool_app: PoolApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What counts as short is raised for this test: the worker times a body by the round
    # trip over its child's pipe, which on a loaded 2-core machine (the whole suite, its
    # servers) has averaged above the 20 ms of SHORT_TASK for a body that does nothing.
    short = 5 * SHORT_TASK
    monkeypatch.setattr(fetcher, "SHORT_TASK", short)
    app, tasks = pool_app
    with app.worker(concurrency=2, pool="processes", app_path=APP_PATH) as worker:
        assert worker.window.size == 2 + 1
        results = [tasks["whoami"].delay(i) for i in range(12)]
        for result in results:
            result.get(timeout=10)
        # The worker timed the bodies in its children (a round trip over their pipes).
        assert worker.window.ran is not None
        assert worker.window.ran < short
        assert worker.window.size == 2 + 4


def test_max_memory_per_child_replaces_a_child_after_each_task_above_it(
    pool_app: PoolApp,
) -> None:
    app, tasks = pool_app
    # Any Python process is above 1 MB: every child serves a single task.
    with app.worker(concurrency=1, pool="processes", app_path=APP_PATH, max_memory_per_child=1):
        ran = [tasks["whoami"].delay(i).get(timeout=10) for i in range(3)]
    assert len(set(ran)) == 3


def test_stop_lets_running_bodies_finish(pool_app: PoolApp, tmp_path: Path) -> None:
    app, tasks = pool_app
    worker = app.worker(concurrency=1, pool="processes", app_path=APP_PATH)
    worker.start()
    try:
        result = tasks["sleep_in_c"].delay(str(tmp_path), 1.0)
        wait_for(lambda: bool(pids(tmp_path, "started")), 10, "the body to start")
    finally:
        worker.stop(timeout=10)
    assert result.get(timeout=1) in pids(tmp_path, "finished")


def test_stop_now_kills_the_children_and_returns_at_once(pool_app: PoolApp, tmp_path: Path) -> None:
    app, tasks = pool_app
    worker = app.worker(concurrency=1, pool="processes", app_path=APP_PATH)
    worker.start()
    try:
        tasks["sleep_in_c"].delay(str(tmp_path), 60.0)
        wait_for(lambda: bool(pids(tmp_path, "started")), 10, "the body to start")
        (child,) = pids(tmp_path, "started")
        asked = time.monotonic()
    finally:
        worker.stop_now()
    assert time.monotonic() - asked < 3.0
    assert not alive(child)
    assert not children()


def test_the_children_find_a_module_level_app_by_themselves() -> None:
    assert locate_app(poolapp.app.kernel, None) == APP_PATH
    assert locate_app(poolapp.app.kernel, "elsewhere:app") == "elsewhere:app"


def test_a_task_the_childrens_app_does_not_declare_is_named_at_start(
    pool_app: PoolApp, caplog: pytest.LogCaptureFixture
) -> None:
    # Declared in the worker's process only (as in a script that adds tasks to an app it
    # imports): the children import the app's module, which does not declare it.
    app, _ = pool_app

    @app.task(name="pool.only_here", retries=0)
    def only_here() -> int:
        return 1

    @app.task(name="pool.async_only_here")
    async def async_only_here() -> int:  # runs on the worker's loop: it needs no child
        return 2

    caplog.set_level(logging.WARNING, logger="taskflow.worker")
    with app.worker(concurrency=1, pool="processes", app_path=APP_PATH):
        with pytest.raises(TaskFailed) as caught:
            only_here.delay().get(timeout=10)
        assert async_only_here.delay().get(timeout=10) == 2

    assert caught.value.exc_type == "LookupError"
    assert "'pool.only_here' is not registered in the child's app" in caught.value.message
    lines = [r.getMessage() for r in caplog.records if "does not declare" in r.getMessage()]
    assert lines == [
        f"pool='processes': the app the child processes import ({APP_PATH}) does not declare "
        "pool.only_here, which this worker's app does: their bodies cannot run in a child, "
        "and each attempt fails; declare them in tests.pool.poolapp or in a module it imports"
    ]


def test_an_app_the_children_cannot_import_is_a_config_error_at_start() -> None:
    with App("pool-local") as local:  # a local variable: no module holds it
        worker = local.worker(concurrency=1, pool="processes")
        with pytest.raises(ConfigError, match="cannot find app 'pool-local'.*app_path="):
            worker.start()


def test_an_app_path_that_does_not_import_is_a_config_error_at_start() -> None:
    with App("pool-bad") as bad:
        worker = bad.worker(concurrency=1, pool="processes", app_path="tests.pool.nowhere:app")
        with pytest.raises(ConfigError, match=r"cannot load app tests\.pool\.nowhere:app"):
            worker.start()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"pool": "forks"}, "pool must be 'threads' or 'processes'"),
        ({"pool": "processes", "max_tasks_per_child": 0}, "max_tasks_per_child must be"),
        ({"pool": "processes", "max_memory_per_child": -1}, "max_memory_per_child must be"),
        # NaN compares false with every size: the limit never recycled a child.
        ({"pool": "processes", "max_memory_per_child": float("nan")}, "max_memory_per_child must"),
        ({"pool": "processes", "max_memory_per_child": float("inf")}, "max_memory_per_child must"),
        ({"max_tasks_per_child": 5}, "need pool='processes'"),
    ],
)
def test_pool_options_are_checked(options: dict[str, Any], message: str) -> None:
    with App("pool-options") as app, pytest.raises(ValueError, match=message):
        app.worker(**options)


def test_time_limit_must_be_a_positive_number() -> None:
    with App("pool-limit") as app:
        with pytest.raises(ValueError, match="bad_limit: time_limit must be positive"):
            app.task(name="bad_limit", time_limit=0)(poolapp.whoami)
        assert app.task(name="ok_limit", time_limit=2)(poolapp.whoami).options.time_limit == 2.0


@pytest.mark.parametrize("limit", [False, True])
def test_a_child_reads_its_memory_only_for_a_memory_limit(limit: bool) -> None:
    # The child's side of the protocol, driven directly: its answers end with its resident
    # memory, which it reads (from /proc) only when the worker set a memory limit.
    with driven_child() as child:
        child.start(APP_PATH, rss=limit)
        (kind, value), rss, _ = child.run("pool.whoami", 7)
        assert (kind, codec.loads(value)) == ("ok", child.proc.pid)
        assert (rss > 0) is limit
    assert child.status == 0  # a closed request pipe ends the child
