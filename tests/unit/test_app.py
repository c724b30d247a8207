"""The App: configuration, the registry, and the enqueue path (no worker involved)."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging
import threading
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import pytest

from taskflow import (
    App,
    ConfigError,
    DuplicateTask,
    FakeClock,
    IdempotencyConflict,
    PayloadError,
    QueueFull,
    TaskContext,
    TaskflowError,
    TaskStatus,
)
from taskflow.brokers import MemoryBroker, Message
from taskflow.codec import decode_envelope
from taskflow.kernel import kernel as kernel_module
from taskflow.results import MemoryResultStore
from taskflow.worker import Worker


class CountingBroker(MemoryBroker):
    """A memory broker that counts publish round trips."""

    def __init__(self) -> None:
        super().__init__()
        self.publishes = 0

    async def publish(self, messages: Sequence[Message]) -> None:
        self.publishes += 1
        await super().publish(messages)


@dataclasses.dataclass
class Point:
    x: int
    y: int


def ready(app: App, queue: str = "default") -> int:
    return app.kernel.call(app.broker.depth(queue))["ready"]


def queued_bodies(app: App, queue: str = "default") -> list[bytes]:
    return app.kernel.call(app.broker.peek(queue, 100))


# -- configuration ---------------------------------------------------------------------
def test_an_app_without_arguments_runs_in_memory() -> None:
    with App("plain") as app:
        assert isinstance(app.broker, MemoryBroker)
        assert isinstance(app.results, MemoryResultStore)
        assert app.default_queue == "default"


def test_environment_urls_replace_the_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TASKFLOW_BROKER_URL", "memory://?lease=5")
    monkeypatch.setenv("TASKFLOW_RESULTS_URL", "memory://?max_entries=3")
    with App("env") as app:
        assert isinstance(app.broker, MemoryBroker) and app.broker.lease == 5.0
        assert isinstance(app.results, MemoryResultStore) and app.results.max_entries == 3


def test_explicit_urls_win_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TASKFLOW_BROKER_URL", "nope://host")
    monkeypatch.setenv("TASKFLOW_RESULTS_URL", "nope://host")
    with App("explicit", broker="memory://?lease=7", results="memory://?max_entries=2") as app:
        assert isinstance(app.broker, MemoryBroker) and app.broker.lease == 7.0
        assert isinstance(app.results, MemoryResultStore) and app.results.max_entries == 2


def test_explicit_instances_win_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TASKFLOW_BROKER_URL", "nope://host")
    broker, store = MemoryBroker(), MemoryResultStore()
    with App("objects", broker=broker, results=store) as app:
        assert app.broker is broker and app.results is store


@pytest.mark.parametrize("kind", ["broker", "results"])
def test_an_unknown_scheme_is_a_config_error_with_the_password_masked(kind: str) -> None:
    url = "bogus://user:s3cret@host:1234/0"
    with pytest.raises(ConfigError, match="bogus") as info:
        App("bad", **{kind: url})  # type: ignore[arg-type]
    assert "s3cret" not in str(info.value)
    assert "***" in str(info.value)


@pytest.mark.parametrize(
    "url",
    [
        "redis://user:s3cret@host:notaport/0",
        "no-scheme-here",
        "memory://?colour=red",
        "memory://?lease=-1",
    ],
)
def test_a_malformed_url_is_a_config_error_never_leaking_the_password(url: str) -> None:
    with pytest.raises(ConfigError) as info:
        App("bad", broker=url)
    assert "s3cret" not in str(info.value)
    assert isinstance(info.value, TaskflowError) and isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"queue_weights": {"q": 0}},
        {"default_retries": -1},
        {"max_queued": 0},
        {"queue_limits": {"q": -3}},
        {"default_timeout": 0},
        {"result_ttl": -1.0},
        {"default_queue": ""},
        # An AttributeError ('list' object has no attribute 'items') before.
        {"queue_weights": ["q"]},
        {"queue_limits": [("q", 3)]},
        {"clock": 5},
    ],
)
def test_bad_app_settings_fail_at_construction(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError, match="bad"):
        App("bad", **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["", "shop\nforged", 5, None])
def test_an_app_name_is_non_empty_printable_text(name: object) -> None:
    # It names the app's log lines, its beat's schedules and its cluster-wide limits; ""
    # and 5 were accepted, and a newline forged log lines.
    with pytest.raises(ConfigError, match="an app name must be non-empty printable text"):
        App(name)  # type: ignore[arg-type]


# -- declaring -------------------------------------------------------------------------
def test_a_task_name_defaults_to_module_and_qualname(app: App) -> None:
    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    assert add.name == f"{__name__}.test_a_task_name_defaults_to_module_and_qualname.<locals>.add"
    assert app.registry.get(add.name) is add


def test_two_functions_under_one_name_raise_duplicate_task(app: App) -> None:
    @app.task(name="shop.job")
    def first() -> None: ...

    with pytest.raises(DuplicateTask, match="shop.job"):

        @app.task(name="shop.job")
        def second() -> None: ...

    assert app.registry.get("shop.job") is first


def test_registering_the_same_function_twice_is_fine(app: App) -> None:
    def job() -> int:
        return 1

    app.task(name="again")(job)
    app.task(name="again")(job)
    assert len(app.registry) == 1


def test_calling_a_task_runs_it_inline(app: App) -> None:
    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(bind=True)
    def who(ctx: TaskContext, suffix: str) -> str:
        return ctx.name + suffix

    assert add(2, 3) == 5
    assert who("!") == f"{who.name}!"
    assert ready(app) == 0


def test_declaring_a_task_touches_no_backend() -> None:
    app = App("lazy")

    @app.task
    def job() -> None: ...

    assert not app.kernel.loop.started
    app.close()


class UnansweredClose(MemoryBroker):
    """A broker whose close never finishes (its server stopped answering)."""

    async def close(self) -> None:
        await asyncio.Event().wait()


def test_closing_an_app_whose_backend_does_not_answer_returns_and_says_so(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(kernel_module, "CLOSE_TIMEOUT", 0.2)
    app = App("stuck", broker=UnansweredClose())

    @app.task
    def job() -> None: ...

    job.delay()  # connects: the loop and the backends are up
    thread = app.kernel.loop._thread
    assert thread is not None and thread.is_alive()
    with caplog.at_level("WARNING", logger="taskflow.kernel"):
        app.close()  # no TimeoutError
    assert "closing the backends took longer than 0.2s" in caplog.text
    assert "stuck" in caplog.text  # names the app
    assert not thread.is_alive()  # the loop's thread is gone all the same
    assert not app.kernel.loop.started


# -- sending -----------------------------------------------------------------------------
def test_delay_enqueues_a_queued_envelope_with_the_encoded_arguments(app: App) -> None:
    @app.task(priority=4, queue="math", retries=2, timeout=9.0)
    def add(x: int, y: int) -> int:
        return x + y

    result = add.delay(2, 3)
    assert result.status is TaskStatus.QUEUED
    [body] = queued_bodies(app, "math")
    env = decode_envelope(body)
    assert (env.id, env.task, env.queue, env.args) == (result.id, add.name, "math", [2, 3])
    assert (env.priority, env.max_retries, env.timeout, env.attempt) == (4, 2, 9.0, 1)


def test_call_options_win_over_task_options_which_win_over_app_defaults() -> None:
    with App("prec", default_retries=1, default_timeout=50.0, default_queue="dq") as app:

        @app.task(priority=2, retries=3)
        def job() -> None: ...

        job.delay()
        job.apply_async(
            priority=8,
            retries=0,
            timeout=1.5,
            queue="other",
            headers={"trace": "x"},
            task_id="fixed-id",
        )
        [plain] = [decode_envelope(b) for b in queued_bodies(app, "dq")]
        [custom] = [decode_envelope(b) for b in queued_bodies(app, "other")]
    assert (plain.priority, plain.max_retries, plain.timeout) == (2, 3, 50.0)
    assert (custom.priority, custom.max_retries, custom.timeout) == (8, 0, 1.5)
    assert (custom.id, custom.headers) == ("fixed-id", {"trace": "x"})


def test_a_payload_that_does_not_fit_is_refused_and_nothing_is_enqueued(app: App) -> None:
    @app.task(name="geo.move")
    def move(p: Point, steps: int) -> Point:
        return p

    with pytest.raises(PayloadError, match=r"geo\.move.*steps.*int") as info:
        move.delay(Point(1, 2), "three")  # type: ignore[arg-type]
    assert isinstance(info.value, TypeError)
    with pytest.raises(PayloadError, match=r"geo\.move.*p\b"):
        move.delay({"x": 1}, 3)  # type: ignore[arg-type]
    assert ready(app) == 0
    assert len(app.results) == 0  # type: ignore[arg-type]


NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize(
    ("options", "option"),
    [
        ({"countdown": NAN}, "countdown"),
        ({"countdown": INF}, "countdown"),
        ({"countdown": -1}, "countdown"),
        ({"countdown": True}, "countdown"),
        ({"expires": NAN}, "expires"),
        ({"expires": INF}, "expires"),
        ({"expires": 0}, "expires"),
        ({"expires": "nan"}, "expires"),
        ({"timeout": 0}, "timeout"),
        ({"timeout": -2.5}, "timeout"),
        ({"timeout": NAN}, "timeout"),
        ({"timeout": "30"}, "timeout"),
        ({"timeout": True}, "timeout"),
        ({"retries": -1}, "retries"),
        ({"retries": True}, "retries"),
        ({"retries": 1.5}, "retries"),
        ({"priority": True}, "priority"),
        ({"priority": 10}, "priority"),
        ({"task_id": ""}, "task_id"),
        ({"task_id": 5}, "task_id"),
    ],
)
def test_call_options_outside_the_protocol_are_refused_naming_task_and_option(
    app: App, options: dict[str, object], option: str
) -> None:
    @app.task(name="shop.job")
    def job() -> None: ...

    with pytest.raises(ValueError, match=rf"shop\.job: {option}"):
        job.apply_async(**options)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=rf"shop\.job: {option}"):
        app.send_task("shop.job", **options)
    assert ready(app) == 0


@pytest.mark.parametrize(
    ("options", "option"),
    [
        ({"timeout": 0}, "timeout"),
        ({"timeout": NAN}, "timeout"),
        ({"retries": -1}, "retries"),
        ({"retries": False}, "retries"),
        ({"priority": True}, "priority"),
        ({"retry_backoff": NAN}, "retry_backoff"),
        ({"retry_backoff_max": INF}, "retry_backoff_max"),
    ],
)
def test_task_options_outside_the_protocol_are_refused_at_declaration(
    app: App, options: dict[str, object], option: str
) -> None:
    with pytest.raises(ValueError, match=rf"shop\.job: {option}"):

        @app.task(name="shop.job", **options)  # type: ignore[call-overload]
        def job() -> None: ...


def test_arguments_nested_beyond_the_protocol_limit_are_refused_at_the_call(app: App) -> None:
    @app.task(name="shop.tree")
    def tree(node, *, extra: object = None) -> None:  # type: ignore[no-untyped-def]
        ...

    def nested(depth: int) -> list[object]:
        value: list[object] = []
        for _ in range(depth - 1):
            value = [value]
        return value

    tree.delay(nested(64))  # exactly the limit
    with pytest.raises(PayloadError, match=r"shop\.tree\(argument 1\): nested deeper than 64"):
        tree.delay(nested(65))
    with pytest.raises(PayloadError, match=r"shop\.tree\(extra\): nested deeper than 64"):
        tree.delay(1, extra=nested(65))
    with pytest.raises(PayloadError, match=r"shop\.tree"):
        tree.delay(nested(400))  # deeper than Python's stack would take: not a RecursionError
    with pytest.raises(PayloadError, match=r"send\.deep"):
        app.send_task("send.deep", args=(nested(400),))
    assert ready(app) == 1


def test_a_task_name_must_be_a_non_empty_string(app: App) -> None:
    with pytest.raises(ValueError, match="task name"):
        app.send_task("")


def test_send_task_by_name_enqueues_without_the_function(app: App) -> None:
    result = app.send_task("elsewhere.job", args=(1, "a"), kwargs={"k": [1]}, priority=3)
    [body] = queued_bodies(app)
    env = decode_envelope(body)
    assert (env.id, env.task, env.args, env.kwargs, env.priority) == (
        result.id,
        "elsewhere.job",
        [1, "a"],
        {"k": [1]},
        3,
    )


def test_enqueue_many_publishes_in_one_round_trip() -> None:
    broker = CountingBroker()
    with App("many", broker=broker) as app:

        @app.task
        def add(x: int, y: int) -> int:
            return x + y

        results = app.enqueue_many([add.s(i, i).set(priority=i % 10) for i in range(50)])
        assert broker.publishes == 1
        assert len({r.id for r in results}) == 50
        assert ready(app) == 50
        assert all(r.status is TaskStatus.QUEUED for r in results[:3])
        with pytest.raises(TypeError):
            app.enqueue_many([(add, 1, 2)])  # type: ignore[list-item]


def test_countdown_and_eta_make_a_task_scheduled(fake_app: App, clock: FakeClock) -> None:
    @fake_app.task
    def job() -> None: ...

    later = job.apply_async(countdown=30)
    at = job.apply_async(eta=datetime.fromtimestamp(clock.time() + 60, tz=UTC))
    assert later.status is TaskStatus.SCHEDULED and at.status is TaskStatus.SCHEDULED
    depth = fake_app.kernel.call(fake_app.broker.depth("default"))
    assert (depth["ready"], depth["scheduled"]) == (0, 2)
    with pytest.raises(ValueError, match="timezone"):
        job.apply_async(eta=datetime(2030, 1, 1))
    with pytest.raises(ValueError, match="countdown or eta"):
        job.apply_async(countdown=1, eta=datetime.now(UTC))


# -- idempotency -------------------------------------------------------------------------
def test_the_same_idempotency_key_returns_the_first_task(app: App) -> None:
    @app.task
    def charge(order: str, cents: int) -> None: ...

    first = charge.apply_async(("o-1", 100), idempotency_key="charge:o-1")
    again = charge.apply_async(("o-1", 100), idempotency_key="charge:o-1")
    assert again.id == first.id
    assert ready(app) == 1
    with pytest.raises(IdempotencyConflict, match="charge:o-1"):
        charge.apply_async(("o-1", 999), idempotency_key="charge:o-1")
    assert ready(app) == 1


def test_an_idempotency_key_is_forgotten_with_the_result_ttl(clock: FakeClock) -> None:
    with App("idem", clock=clock, result_ttl=10.0) as app:

        @app.task
        def job() -> None: ...

        first = job.apply_async(idempotency_key="k")
        clock.advance(11)
        assert job.apply_async(idempotency_key="k").id != first.id


# -- bounded queues --------------------------------------------------------------------
def test_a_full_bounded_queue_raises_queue_full_and_writes_nothing() -> None:
    with App("bounded", max_queued=2) as app:

        @app.task
        def job(n: int) -> None: ...

        job.delay(1)
        job.delay(2)
        with pytest.raises(QueueFull, match="default"):
            job.delay(3)
        assert ready(app) == 2
        assert len(app.results) == 2  # type: ignore[arg-type]
        with pytest.raises(QueueFull):
            job.apply_async((4,), idempotency_key="k4")
        assert app.kernel.call(app.results.get_value("idem:k4")) is None


def test_enqueue_many_is_all_or_nothing_on_a_full_queue() -> None:
    with App("bounded", queue_limits={"small": 3}) as app:

        @app.task(queue="small")
        def job(n: int) -> None: ...

        job.delay(0)
        with pytest.raises(QueueFull):
            app.enqueue_many([job.s(i) for i in range(1, 4)])
        assert ready(app, "small") == 1
        assert len(app.results) == 1  # type: ignore[arg-type]
        job.delay(1)
        job.apply_async((2,), queue="unbounded")
        job.apply_async((3,), queue="unbounded")
        assert ready(app, "small") == 2


@pytest.mark.parametrize(
    ("hook", "why"),
    [
        (None, "must be callable, got None"),
        ("audit", "must be callable, got 'audit'"),
        (lambda: None, r"must take one argument \(the TaskEvent\), got .*<lambda>\(\)"),
        (lambda event, extra: None, r"must take one argument .*\(event, extra\)"),
    ],
)
def test_a_hook_that_cannot_take_an_event_is_refused_when_declared(
    app: App, hook: object, why: str
) -> None:
    # Accepted, it failed (logged and ignored) at every event of every task.
    with pytest.raises(ValueError, match=f"success hook {why}"):
        app.hook("success")(hook)  # type: ignore[arg-type]
    if hook is not None:  # on_failure=None declares no hook
        with pytest.raises(ValueError, match=f"shop.job: on_failure {why}"):
            app.task(name="shop.job", on_failure=hook)(lambda: None)
    app.hook("success")(lambda event, extra=None: None)  # one argument given is enough
    app.hook("finish")(print)  # a builtin without a signature is taken as it is


def test_a_queued_hook_sees_each_enqueue(app: App) -> None:
    seen: list[tuple[str, str]] = []
    app.hook("queued")(lambda event: seen.append((event.kind, event.status)))

    @app.task
    def job() -> None: ...

    job.delay()
    job.apply_async(countdown=5)
    assert seen == [("queued", "queued"), ("queued", "scheduled")]
    with pytest.raises(ValueError, match="unknown hook"):
        app.hook("sometimes")


def test_async_producers_enqueue_with_adelay_and_aapply_async(app: App) -> None:
    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    async def produce() -> list[str]:
        first = await add.adelay(1, 2)
        second = await add.aapply_async((3, 4), priority=9)
        many = await app.aenqueue_many([add.s(5, 6)])
        return [first.id, second.id, many[0].id]

    ids = asyncio.run(produce())
    bodies = [decode_envelope(b) for b in queued_bodies(app)]
    assert [env.id for env in bodies] == [ids[1], ids[0], ids[2]]  # priority 9 first
    assert [env.args for env in bodies] == [[3, 4], [1, 2], [5, 6]]


def _closers() -> None:
    """Wait for the threads that close dropped apps."""
    for thread in threading.enumerate():
        if thread.name == "taskflow-close":
            thread.join(10.0)


def test_an_app_dropped_without_close_stops_its_loop_thread_and_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Built per request and never closed, each app kept a loop thread for the process's life.
    gc.collect()
    _closers()
    before = set(threading.enumerate())

    def handler(n: int) -> str:
        app = App(f"request{n}")

        @app.task(name="shop.job")
        def job(x: int) -> int:
            return x

        return job.delay(n).id

    with caplog.at_level(logging.WARNING, logger="taskflow.kernel"):
        ids = [handler(n) for n in range(3)]
        gc.collect()
        _closers()
    assert len(set(ids)) == 3
    assert set(threading.enumerate()) - before == set()
    dropped = [
        r.getMessage() for r in caplog.records if "dropped without close()" in r.getMessage()
    ]
    assert len(dropped) == 3 and all("call app.close()" in m for m in dropped)


def test_a_task_kept_after_its_app_is_dropped_still_sends() -> None:
    # The task holds the app's kernel: only what nothing refers to is closed.
    def declare() -> Any:
        app = App("kept")

        @app.task(name="shop.job")
        def job(x: int) -> int:
            return x

        return job

    job = declare()
    gc.collect()
    sent = job.delay(4)
    gc.collect()
    Worker(job.kernel, concurrency=1).run_until_idle()
    assert sent.get(timeout=10) == 4
    job.kernel.close()
