"""Task options: validation names the task and the option, at declaration and at call."""

from __future__ import annotations

import math
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from taskflow import App, group
from taskflow.errors import ConfigError
from taskflow.options import (
    RateLimit,
    TaskOptions,
    check_priority,
    check_timeout,
    parse_rate_limit,
)


@pytest.mark.parametrize(
    ("text", "rate", "count"),
    [
        ("10/s", 10.0, 10.0),
        ("120/m", 2.0, 120.0),
        ("3600/h", 1.0, 3600.0),
        (2.5, 2.5, 2.5),
        (" 5 / sec ", 5.0, 5.0),
        ("0.5/s", 0.5, 0.5),
    ],
)
def test_rate_limits_parse_to_tokens_per_second(
    text: str | float, rate: float, count: float
) -> None:
    limit = parse_rate_limit(text, "t")
    assert math.isclose(limit.rate, rate)
    assert limit.count == count


@pytest.mark.parametrize("text", ["10", "10/d", "ten/s", "-1/s", "0/s", "", "/s", "1/s/s"])
def test_a_malformed_rate_limit_is_a_value_error_naming_task_and_option(text: str) -> None:
    with pytest.raises(ValueError, match=r"shop\.mail.*rate_limit"):
        parse_rate_limit(text, "shop.mail")


@pytest.mark.parametrize("value", [0, -1.0, math.inf, math.nan, True])
def test_a_non_positive_numeric_rate_limit_is_refused(value: float) -> None:
    with pytest.raises(ValueError, match="rate_limit"):
        parse_rate_limit(value, "t")


@pytest.mark.parametrize("value", [-1, 10, 1.5, "5", True, None])
def test_priority_must_be_an_integer_from_0_to_9(value: object) -> None:
    with pytest.raises(ValueError, match=r"t: priority"):
        check_priority(value, "t")


def test_priorities_0_to_9_are_accepted() -> None:
    assert [check_priority(p, "t") for p in range(10)] == list(range(10))


@pytest.mark.parametrize("value", [0, -1, -0.5, math.inf, math.nan, "3", True])
def test_a_timeout_must_be_positive_and_finite(value: object) -> None:
    with pytest.raises(ValueError, match=r"t: timeout"):
        check_timeout(value, "t")


def test_a_missing_timeout_stays_none_and_ints_become_floats() -> None:
    assert check_timeout(None, "t") is None
    assert check_timeout(3, "t") == 3.0


def test_options_build_keeps_defaults_and_parses_the_rate_limit() -> None:
    opts = TaskOptions.build("t", {"rate_limit": "4/s", "rate_burst": 2, "priority": 3})
    assert opts.rate_limit == RateLimit(4.0, 4.0, 2)
    assert opts.priority == 3
    assert opts.retries is None
    assert opts.store_result is True


def test_retry_on_accepts_one_class_or_a_tuple() -> None:
    assert TaskOptions.build("t", {"retry_on": KeyError}).retry_on == (KeyError,)
    assert TaskOptions.build("t", {"retry_on": [KeyError, OSError]}).retry_on == (KeyError, OSError)
    with pytest.raises(ValueError, match="t: retry_on"):
        TaskOptions.build("t", {"retry_on": "KeyError"})


@pytest.mark.parametrize(
    ("options", "option"),
    [
        ({"priority": 10}, "priority"),
        ({"priority": -1}, "priority"),
        ({"timeout": 0}, "timeout"),
        ({"timeout": -5}, "timeout"),
        ({"rate_limit": "fast"}, "rate_limit"),
        ({"rate_burst": 0, "rate_limit": "1/s"}, "rate_burst"),
        ({"retries": -1}, "retries"),
        ({"retry_backoff": -1}, "retry_backoff"),
        ({"queue": "two words"}, "queue"),
        ({"on_success": 3}, "on_success"),
        ({"colour": "red"}, "colour"),
        # Read from text, "no" was taken as true; a burst without a rate was ignored.
        ({"store_result": "no"}, "store_result must be True or False"),
        ({"retry_jitter": 0}, "retry_jitter must be True or False"),
        ({"bind": "yes"}, "bind must be True or False"),
        ({"rate_burst": 5}, "rate_burst is the burst of a rate_limit"),
    ],
)
def test_a_bad_option_at_declaration_names_the_task_and_option(
    app: App, options: dict[str, object], option: str
) -> None:
    with pytest.raises(ValueError, match=rf"shop\.job.*{option}"):

        @app.task(name="shop.job", **options)
        def job() -> None: ...

    assert "shop.job" not in app.registry


def test_an_empty_task_name_is_refused_not_replaced_by_the_functions(app: App) -> None:
    with pytest.raises(ValueError, match="task name must be a non-empty string"):

        @app.task(name="")
        def job() -> None: ...

    assert list(app.registry) == []


def test_a_bad_option_on_an_unnamed_task_names_the_function(app: App) -> None:
    with pytest.raises(ValueError, match=r"\.nightly_job: priority"):

        @app.task(priority=42)
        def nightly_job() -> None: ...

    assert len(app.registry) == 0


@pytest.mark.parametrize(
    ("options", "option"),
    [
        ({"priority": 10}, "priority"),
        ({"timeout": 0}, "timeout"),
        ({"timeout": -1.0}, "timeout"),
        ({"retries": -2}, "retries"),
        ({"countdown": -1}, "countdown"),
        ({"queue": ""}, "queue"),
        ({"headers": {"a": 1}}, "headers"),
        ({"idempotency_key": ""}, "idempotency_key"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_a_bad_option_at_apply_async_names_the_task_and_option(
    app: App, options: dict[str, object], option: str
) -> None:
    @app.task(name="shop.job")
    def job() -> None: ...

    with pytest.raises(ValueError, match=rf"shop\.job.*{option}"):
        job.apply_async(**options)  # type: ignore[arg-type]
    assert app.kernel.call(app.broker.depth("default"))["ready"] == 0


@pytest.mark.parametrize("text", ["a\nb", "a\tb", "a\x1b[2Jb", "a\x00b"])
def test_a_control_character_in_a_task_id_queue_or_task_name_is_refused_at_the_call(
    app: App, text: str
) -> None:
    # NATS took a task whose id held a newline and never delivered it; in a log line the
    # newline forges a line. Nothing is sent.
    @app.task(name="shop.job")
    def job() -> None: ...

    with pytest.raises(ValueError, match=r"shop\.job: task_id must be printable"):
        job.apply_async(task_id=text)
    with pytest.raises(ValueError, match=r"shop\.job: queue must be .*printable"):
        job.apply_async(queue=text)
    with pytest.raises(ValueError, match="task name must be printable"):
        app.send_task(f"shop{text}job")
    with pytest.raises(ValueError, match="printable"):
        app.task(name=f"shop{text}other")(lambda: None)
    with pytest.raises(ValueError, match="printable"):
        app.worker(queues=[text])
    assert app.kernel.call(app.broker.depth("default"))["ready"] == 0


def test_ids_queues_and_names_may_hold_any_printable_text(app: App) -> None:
    @app.task(name="shop.send mail/ä")
    def job() -> None: ...

    sent = job.apply_async(task_id="order 42/ä.*>", queue="emails.ä/*>")
    assert sent.id == "order 42/ä.*>"
    assert app.kernel.call(app.broker.depth("emails.ä/*>"))["ready"] == 1


def test_a_worker_given_one_queue_name_as_a_string_refuses_it(app: App) -> None:
    # Read letter by letter it listened on 'e', 'm', 'a', 'i', 'l', 's' and ran nothing.
    with pytest.raises(ConfigError, match=r"worker queues must be a list of names.*\['emails'\]"):
        app.worker(queues="emails")
    with pytest.raises(ConfigError, match=r"worker queues must be a list of names"):
        app.run_worker(queues="emails")
    assert app.worker(queues=("emails",)).queues == ["emails"]


def test_a_task_scheduled_more_than_100_years_ahead_is_refused_at_the_call(app: App) -> None:
    # Past the year 9999 no date can show it: `taskflow inspect` failed on such a task.
    @app.task(name="shop.job")
    def job() -> None: ...

    century = 100 * 365.25 * 86400
    with pytest.raises(ValueError, match=r"shop\.job: countdown 1e\+12s is more than 100"):
        job.apply_async(countdown=1e12)
    later = datetime.now(UTC) + timedelta(days=365.25 * 101)
    with pytest.raises(ValueError, match=r"shop\.job: eta .* is more than 100 years ahead"):
        job.apply_async(eta=later)
    assert app.kernel.call(app.broker.depth("default"))["scheduled"] == 0
    assert job.apply_async(countdown=century - 60).status.value == "scheduled"


def test_unknown_options_are_refused_by_send_task_and_signatures(app: App) -> None:
    @app.task(name="shop.job")
    def job() -> None: ...

    with pytest.raises(ValueError, match=r"shop\.job.*colour"):
        app.send_task("shop.job", colour="red")
    with pytest.raises(ValueError, match=r"shop\.job.*colour"):
        job.s().set(colour="red")


@pytest.mark.parametrize(
    ("options", "option"),
    [
        ({"priority": 11}, "priority must be an integer 0-9"),
        ({"queue": "two words"}, "queue must be"),
        ({"countdown": -1}, "countdown is negative"),
        ({"countdown": 1, "eta": datetime.now(UTC)}, "give countdown or eta, not both"),
        ({"eta": datetime(2030, 1, 1)}, "eta must be timezone-aware"),  # noqa: DTZ001
        ({"expires": 0}, "expires must be positive"),
        ({"retries": -1}, "retries must be"),
        ({"timeout": math.nan}, "timeout must be positive"),
        ({"task_id": "a\nb"}, "task_id must be printable"),
        ({"headers": {"a": 1}}, "headers must map str to str"),
        ({"idempotency_key": 5}, "idempotency_key must be a non-empty string"),
    ],
)
def test_a_bad_option_value_is_refused_by_a_signatures_set_and_with_options(
    app: App, options: dict[str, object], option: str
) -> None:
    # It was accepted there and refused only when the canvas holding it was applied.
    @app.task(name="shop.job")
    def job() -> None: ...

    with pytest.raises(ValueError, match=rf"shop\.job: {option}"):
        job.s().set(**options)
    with pytest.raises(ValueError, match=rf"shop\.job: {option}"):
        job.with_options(**options)  # type: ignore[arg-type]
    assert job.s().set(priority=None, queue="emails").options == {
        "priority": None,
        "queue": "emails",
    }


def test_an_unknown_option_is_named_with_the_one_it_is_likely_a_misspelling_of() -> None:
    with App("typos") as app, pytest.raises(ValueError) as info:

        @app.task(name="shop.mail", retires=3, time_limt=5, colour="red")
        def mail() -> None: ...

    assert str(info.value) == (
        "shop.mail: unknown task option(s): colour, retires (did you mean retries?), "
        "time_limt (did you mean time_limit?)"
    )


def test_a_string_or_mapping_given_as_args_is_refused_without_echoing_it(app: App) -> None:
    # ``args=("secret-token")`` forgot its comma: it was sent as twelve one-letter arguments
    # (a dict as its keys), and the task ran with them or failed on the worker.
    @app.task(name="shop.job")
    def job(*parts: str) -> str:
        return "".join(parts)

    for args in ["secret-token", b"secret-token", {"secret-token": 1}, {"secret-token"}]:
        with pytest.raises(TypeError, match=r"shop\.job: args must be a list or tuple") as info:
            job.apply_async(args)  # type: ignore[arg-type]
        assert "secret" not in str(info.value)
        with pytest.raises(TypeError, match=r"shop\.job: args must be a list or tuple"):
            app.send_task("shop.job", args)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match=r"group\.apply_async: args must be a list or"):
            group(job.s("x")).apply_async(args)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match=r"args must be a list or tuple"):
            app.kernel.call(job.aapply_async(args))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"one argument is written \(value,\)"):
        job.apply_async("secret-token")  # type: ignore[arg-type]
    assert app.kernel.call(app.broker.depth("default"))["ready"] == 0
    # Lists, tuples and other iterables (in their order) are arguments as before.
    assert job.apply_async(["a", "b"]).id
    assert job.apply_async(("a", "b")).id
    assert app.send_task("shop.job", iter(["a", "b"])).id
    assert app.kernel.call(app.broker.depth("default"))["ready"] == 3


def test_kwargs_must_be_a_mapping_of_names(app: App) -> None:
    @app.task(name="shop.job")
    def job(colour: str = "red") -> str:
        return colour

    with pytest.raises(TypeError, match=r"shop\.job: kwargs must be a mapping .* got list"):
        job.apply_async((), [("colour", "blue")])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"shop\.job: kwargs' names must be strings, got 1"):
        app.send_task("shop.job", (), {1: "blue"})
    assert app.kernel.call(app.broker.depth("default"))["ready"] == 0


def test_a_schedule_given_one_string_as_args_is_refused(app: App) -> None:
    @app.task(name="shop.report")
    def report(*kinds: str) -> None: ...

    with pytest.raises(ConfigError, match=r"schedule 'daily'.*args must be a list or tuple"):
        app.add_periodic(report, every=60, name="daily", args="sales")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"schedule 'daily'.*kwargs must be a mapping"):
        app.add_periodic(report, every=60, name="daily", kwargs=[("a", 1)])  # type: ignore[arg-type]
    assert [s.schedule.name for s in app.schedules.list()] == []
    app.add_periodic(report, every=60, name="daily", args=["sales"])
    [info] = app.schedules.list()
    assert info.schedule.args == ("sales",)


@pytest.mark.parametrize("task_id", ["", 5, None])
def test_an_id_to_look_up_must_be_a_string(app: App, task_id: object) -> None:
    # app.result(5) was accepted and reported a task that never existed as pending. (A
    # control character may be looked up: another producer's message can have been
    # recorded under it; see tests/worker/test_running_worker.py.)
    lookups = {
        "app.result": app.result,
        "app.get_task": app.get_task,
        "app.group_result": app.group_result,
        "app.chain_result": app.chain_result,
        "admin.task": app.admin.task,
        "admin.cancel": app.admin.cancel,
        "admin.reveal": app.admin.reveal,
    }
    for what, lookup in lookups.items():
        with pytest.raises(ConfigError, match=rf"{what}: task_id must be"):
            lookup(task_id)  # type: ignore[operator]


def test_a_uuid_is_an_id_as_its_text(app: App) -> None:
    @app.task(name="shop.job")
    def job() -> None: ...

    chosen = uuid.uuid4()
    sent = job.apply_async(task_id=chosen)  # type: ignore[arg-type]
    assert app.result(chosen).id == sent.id == str(chosen)  # type: ignore[arg-type]
    assert app.get_task(chosen).id == str(chosen)  # type: ignore[arg-type]
