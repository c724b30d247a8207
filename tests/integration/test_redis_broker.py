"""The Redis broker and result store under a real App (in-process worker, real server)."""

from __future__ import annotations

import asyncio
import gc
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator

import pytest
import redis
import redis.asyncio as aioredis

from taskflow import App, TaskCancelled
from taskflow._redis.connection import broker_error
from taskflow.brokers.redis import RedisBroker
from taskflow.errors import BrokerError, ConfigError, QueueFull
from taskflow.results.redis import RedisResultStore
from tests.integration.redis_helpers import free_port, fresh_url
from tests.unit.test_fork import in_child

pytestmark = pytest.mark.integration


@pytest.fixture
def url() -> Iterator[str]:
    yield from fresh_url(lease=5)


def test_a_task_round_trips_through_redis_with_its_result(url: str) -> None:
    with App("rt", broker=url) as app:

        @app.task
        def add(x: int, y: int) -> int:
            return x + y

        with app.worker(concurrency=4):
            assert add.delay(2, 3).get(timeout=10) == 5
            results = app.enqueue_many([add.s(i, i) for i in range(50)])
            assert [r.get(timeout=10) for r in results] == [i * 2 for i in range(50)]
            assert results[0].info().attempts == 1


def test_an_idle_worker_picks_up_a_task_within_milliseconds(url: str) -> None:
    with App("idle", broker=url) as app:

        @app.task
        async def stamp() -> float:
            return time.time()

        with app.worker(concurrency=2):
            stamp.delay().get(timeout=10)  # warm up
            latencies = []
            for _ in range(20):
                time.sleep(0.05)  # let the worker go idle (blocked in its fetch)
                sent = time.time()
                latencies.append(stamp.delay().get(timeout=10) - sent)
    latencies.sort()
    assert latencies[len(latencies) // 2] < 0.02, latencies


def test_a_two_hour_countdown_sits_in_the_redis_schedule_not_in_a_worker(url: str) -> None:
    with App("later", broker=url) as app:

        @app.task
        def later() -> None: ...

        with app.worker(concurrency=1) as worker:
            result = later.apply_async(countdown=7200)
            broker = app.broker
            assert isinstance(broker, RedisBroker)
            client = redis.Redis.from_url(url.split("?", 1)[0])
            try:
                score = client.zscore(broker.key("q", "default", "sched"), result.id)
            finally:
                client.close()
            assert score is not None and score > time.time() + 7000
            assert worker.stats()["buffered"] == 0
            assert result.status.value == "scheduled"


def test_a_full_bounded_queue_refuses_the_whole_batch(url: str) -> None:
    with App("full", broker=url, max_queued=3) as app:

        @app.task
        def noop() -> None: ...

        app.enqueue_many([noop.s(), noop.s()])
        with pytest.raises(QueueFull):
            app.enqueue_many([noop.s(), noop.s()])
        broker = app.broker
        assert isinstance(broker, RedisBroker)
        assert app.kernel.call(broker.depth("default"))["ready"] == 2


def test_a_failed_pipelined_command_is_named_without_its_arguments() -> None:
    """redis-py quotes a failed pipelined command's arguments in its error; a BrokerError
    names the command only (its arguments may be a task's)."""
    key = f"tfpipe{uuid.uuid4().hex[:8]}"

    async def fail() -> BaseException:
        client = aioredis.Redis(port=6379)
        try:
            async with client.pipeline(transaction=False) as pipe:
                pipe.set(key, "x")
                pipe.hset(key, "card", "4111-1111-1111-1111")  # the wrong type: an error
                await pipe.execute()
        except redis.ResponseError as exc:
            return exc
        finally:
            await client.delete(key)
            await client.aclose()
        raise AssertionError("the pipeline did not fail")

    raw = asyncio.run(fail())
    assert "4111-1111-1111-1111" in str(raw)  # what redis-py says
    message = str(broker_error("redis://127.0.0.1:6379/0", raw))
    assert "4111" not in message
    assert message.startswith("redis at redis://127.0.0.1:6379/0: command HSET (#2 of a pipeline)")
    assert "WRONGTYPE" in message


def test_an_unreachable_server_raises_broker_error_naming_the_masked_url() -> None:
    port = free_port()
    url = f"redis://user:secret@127.0.0.1:{port}/0?connect_timeout=1"
    with App("down", broker=url) as app:

        @app.task
        def noop() -> None: ...

        started = time.monotonic()
        with pytest.raises(BrokerError) as info:
            noop.delay()
    assert time.monotonic() - started < 3
    assert "***" in str(info.value) and "secret" not in str(info.value)
    assert f"127.0.0.1:{port}" in str(info.value)


def test_url_options_configure_both_backends_and_unknown_ones_are_rejected() -> None:
    broker = RedisBroker.from_url("redis://localhost:6379/0?lease=7&prefix=shop")
    assert (broker.lease, broker.prefix) == (7.0, "shop")
    store = RedisResultStore.from_url("redis://localhost:6379/0?lease=7&prefix=shop")
    assert store.prefix == "shop"
    with pytest.raises(ConfigError) as info:
        RedisBroker.from_url("redis://:pw@localhost:6379/0?leese=7")
    assert "leese" in str(info.value) and "pw" not in str(info.value)
    with pytest.raises(ConfigError):
        RedisBroker.from_url("redis://localhost:6379/0?prefix=a{b}")
    app = App("derived", broker="redis://localhost:6379/0?prefix=shop")
    try:
        assert isinstance(app.results, RedisResultStore) and app.results.prefix == "shop"
    finally:
        app.close()


def _bury(app: App, queue: str, count: int) -> list[str]:
    """``count`` tasks of ``queue`` that fail for good, run until they are dead letters."""

    @app.task(name=f"dead.{queue}", queue=queue)
    def boom(i: int) -> None:
        raise ValueError("boom")

    ids = [boom.delay(i).id for i in range(count)]
    # One slot: the tasks fail, and become dead letters, in the order they were sent.
    app.worker(queues=[queue], concurrency=1).run_until_idle()
    return ids


def test_dead_letters_are_all_kept_unless_a_limit_is_given(url: str) -> None:
    with App("deadkeep", broker=url) as app:
        ids = _bury(app, "keep", 25)
        page = app.admin.dead_letters("keep", limit=100)
        assert [d.task_id for d in page.items] == ids  # nothing dropped by default

    with App("deadcap", broker=f"{url}&dead_letter_limit=10") as app:
        ids = _bury(app, "capped", 25)
        page = app.admin.dead_letters("capped", limit=100)
        assert [d.task_id for d in page.items] == ids[-10:]  # the newest ten
        # The dropped ones keep their failed record.
        assert app.result(ids[0]).info().status.value == "failed"


@pytest.mark.parametrize("value", ["0", "-1", "abc", "1.5"])
def test_a_bad_dead_letter_limit_is_a_config_error(value: str) -> None:
    with pytest.raises(ConfigError, match="dead_letter_limit"):
        App("bad", broker=f"redis://127.0.0.1:6379/0?dead_letter_limit={value}")


def test_a_stopped_worker_leaves_no_control_subscription_and_the_next_one_subscribes(
    url: str,
) -> None:
    # The subscription that carries cancel commands stayed open after an embedded worker
    # stopped: one idle connection per app, and a "Task was destroyed" line at exit.
    client = redis.Redis.from_url(url.partition("?")[0])
    with App("ctl", broker=url) as app:
        channel = app.kernel.call(_channel(app))

        started = threading.Event()

        @app.task
        async def wait_for_cancel() -> None:
            started.set()
            await asyncio.sleep(60)

        for _round in range(2):
            started.clear()
            with app.worker(concurrency=1):
                running = wait_for_cancel.delay()
                assert started.wait(10)
                # The worker subscribes beside its first fetch: maybe after the task started.
                deadline = time.monotonic() + 10
                while not client.pubsub_numsub(channel)[0][1] and time.monotonic() < deadline:
                    time.sleep(0.01)
                assert client.pubsub_numsub(channel) == [(channel.encode(), 1)]
                assert running.cancel()
                with pytest.raises(TaskCancelled):
                    running.get(timeout=10)
            deadline = time.monotonic() + 5
            while client.pubsub_numsub(channel)[0][1] and time.monotonic() < deadline:
                time.sleep(0.01)
            assert client.pubsub_numsub(channel) == [(channel.encode(), 0)]


async def _channel(app: App) -> str:
    broker = app.broker
    assert isinstance(broker, RedisBroker)
    return broker.key("control")


_UNCLOSED = """
import sys
from taskflow import App
app = App("exit", broker=sys.argv[1])

@app.task
def add(x: int, y: int) -> int:
    return x + y

with app.worker(concurrency=2):
    print(add.delay(2, 3).get(timeout=10))
"""


def test_a_script_that_never_closes_its_app_exits_without_asyncio_complaints(url: str) -> None:
    done = subprocess.run(
        [sys.executable, "-c", _UNCLOSED, url],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (done.returncode, done.stdout) == (0, "5\n"), done.stderr
    assert "destroyed" not in done.stderr and "pending" not in done.stderr, done.stderr


def test_apps_dropped_without_close_leave_no_connection_behind(url: str) -> None:
    # Built per request and never closed, each app kept its connections open for the
    # process's life: a web process ran out of them.
    def connections() -> int:
        with redis.Redis.from_url(url.split("?", maxsplit=1)[0]) as client:
            return len(client.client_list()) - 1

    dropped: list[App] = []  # held only while their connections are counted

    def handler(n: int) -> str:
        app = App(f"request{n}", broker=url)
        dropped.append(app)
        return app.send_task("shop.job", args=(n,)).id

    gc.collect()
    before = connections()
    assert len({handler(n) for n in range(3)}) == 3
    assert connections() >= before + 3  # each handler's app connected
    dropped.clear()
    gc.collect()
    for thread in threading.enumerate():
        if thread.name == "taskflow-close":
            thread.join(10.0)
    assert connections() <= before


def test_a_redis_app_used_before_a_fork_still_sends_from_the_child_and_refuses_loop_calls(
    url: str,
) -> None:
    # A pre-forking web server's workers send fire-and-forget tasks: redis-py's own pools
    # connect again in a child, so delay() works there; reads need the app's loop, which
    # the child does not have.
    with App("forked", broker=url) as app:

        @app.task
        def add(x: int, y: int) -> int:
            return x + y

        assert add.delay(1, 2).status.value == "queued"

        def child() -> str:
            sent = add.delay(3, 4)
            try:
                sent.status  # noqa: B018 -- the read is the point
            except ConfigError as exc:
                return f"{sent.id} {exc}"
            return "read"

        sent_id, _, refused = in_child(child).partition(" ")
        assert refused.startswith("app 'forked' was used in process")
        assert app.result(sent_id).status.value == "queued"  # the child's send went out
