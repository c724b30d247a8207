"""Backend URLs: strict validation at App(), case-insensitive schemes, and masking everywhere."""

from __future__ import annotations

import pytest

from taskflow import App, BrokerError, ConfigError
from taskflow.brokers import MemoryBroker, broker_from_url
from taskflow.results import MemoryResultStore, results_from_url
from taskflow.urls import SCHEMES, amqp_vhost, mask_url, parse_url, url_options

SECRET = "s3cretPW"
ROLES = ["broker", "results"]


# -- masking ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (f"redis://:{SECRET}@127.0.0.1:6379/0", "redis://:***@127.0.0.1:6379/0"),
        (f"redis://user:{SECRET}@127.0.0.1:6379/0", "redis://user:***@127.0.0.1:6379/0"),
        (f"nats://user:{SECRET}@127.0.0.1:4222", "nats://user:***@127.0.0.1:4222"),
        (f"nats://{SECRET}@127.0.0.1:4222", "nats://***@127.0.0.1:4222"),  # a NATS token
        # URL-special characters, percent-encoded as they must be: s3cret@/:?#PW
        ("redis://:s3cret%40%2F%3A%3F%23PW@127.0.0.1:6379/0", "redis://:***@127.0.0.1:6379/0"),
    ],
)
def test_repr_of_an_app_and_its_backends_masks_the_password(url: str, shown: str) -> None:
    with App("masked", broker=url) as app:
        texts = [repr(app), repr(app.broker), repr(app.results)]
    for text in texts:
        assert SECRET not in text and "s3cret" not in text
        assert shown in text


@pytest.mark.parametrize(
    "url",
    [
        f"redis://user:{SECRET[:4]}/{SECRET[4:]}@host:6379/0",  # an unencoded '/'
        f"redis://user:{SECRET[:4]}?{SECRET[4:]}@host:6379/0",  # an unencoded '?'
        f"redis://host:6379/0?password={SECRET}",  # a secret-looking query option
        f"nats://host:4222?token={SECRET}&prefix=p",
    ],
)
def test_masking_hides_secrets_that_urlsplit_would_misplace(url: str) -> None:
    masked = mask_url(url)
    assert SECRET[:4] not in masked and SECRET[4:] not in masked
    with pytest.raises(ConfigError) as info:
        broker_from_url(url)
    assert SECRET[:4] not in str(info.value) and SECRET[4:] not in str(info.value)


def test_a_connection_error_names_the_url_with_the_password_masked() -> None:
    # Port 1 on localhost refuses at once; the error must name the URL without the secret.
    broker = broker_from_url(f"redis://:{SECRET}@127.0.0.1:1/0?connect_timeout=1")
    with App("unreachable", broker=broker) as app, pytest.raises(BrokerError) as info:
        app.kernel.call(broker.connect())
    assert SECRET not in str(info.value)
    assert "redis://:***@127.0.0.1:1/0" in str(info.value)


def test_a_nats_connection_error_masks_user_password_and_token() -> None:
    for url in (
        f"nats://user:{SECRET}@127.0.0.1:1?connect_timeout=1",
        f"nats://{SECRET}@127.0.0.1:1?connect_timeout=1",
    ):
        broker = broker_from_url(url)
        with App("unreachable", broker=broker) as app, pytest.raises(BrokerError) as info:
            app.kernel.call(broker.connect())
        assert SECRET not in str(info.value)
        assert "***@127.0.0.1:1" in str(info.value)


# -- strict validation -----------------------------------------------------------------
BAD_URLS = [
    # (url, what the message must say)
    (f"redis://:{SECRET}@h:6379/abc", "database number"),
    (f"redis://:{SECRET}@h:6379/0/1", "database number"),
    (f"redis://:{SECRET}@h:6379/0?leese=5", "unknown option 'leese'; known: connect_timeout"),
    (f"redis://:{SECRET}@h:6379/0?lease=abc", "lease='abc' must be a positive number"),
    (f"redis://:{SECRET}@h:6379/0?lease=-1", "lease='-1' must be a positive number"),
    (f"redis://:{SECRET}@h:6379/0?lease=nan", "lease='nan' must be a positive number"),
    (f"redis://:{SECRET}@h:6379/0?lease=inf", "lease='inf' must be a positive number"),
    (f"redis://:{SECRET}@h:6379/0?lease=", "lease='' must be a positive number"),
    (f"redis://:{SECRET}@h:6379/0?lease=1&lease=2", "'lease' is given twice"),
    (f"redis://:{SECRET}@h:6379/0?prefix=", "prefix must not be empty"),
    (f"redis://:{SECRET}@h:6379/0#frag", "fragment"),
    (f"redis://:{SECRET}@h:notaport/0", "port must be a number"),
    (f"nats://u:{SECRET}@h:4222/stream", "take no path"),
    (f"nats://u:{SECRET}@h:4222?colour=red", "unknown option 'colour'"),
    ("memory://somehost", "takes no host"),
    ("memory://?lease=abc", "lease"),  # the broker: not a number; the store: not an option
    (f"amqp://guest:{SECRET}@h:5672//?colour=red", "unknown option 'colour'"),
    (f"amqp://guest:{SECRET}@h:5672/a/b", "the path is the virtual host"),
    (f"amqps://guest:{SECRET}@h:5671//?lease=abc", "lease"),
    ("sqlite://", "name the database file"),
    ("sqlite://host/tasks.db", "takes no host"),
    ("sqlite:///tasks.db?colour=red", "unknown option 'colour'"),
    (f"bogus://u:{SECRET}@h", "unknown"),
    ("redis://h:6379/0 ", "whitespace"),
]


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize(("url", "message"), BAD_URLS)
def test_a_bad_url_is_a_config_error_naming_the_masked_url_and_the_fix(
    role: str, url: str, message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        App("strict", **{role: url})  # type: ignore[arg-type]
    text = str(info.value)
    assert message in text
    assert SECRET not in text
    assert mask_url(url.strip()) in text or "whitespace" in text
    assert f"{role} URL" in text


@pytest.mark.parametrize("scheme", ["kafka", "amqp1", "redis+sentinel"])
def test_an_unknown_scheme_lists_the_supported_ones_instead_of_a_missing_module(
    scheme: str,
) -> None:
    with pytest.raises(ConfigError) as info:
        broker_from_url(f"{scheme}://host:1234")
    supported = "memory://, redis://, rediss://, nats://, tls://, sqlite://, amqp://, amqps://"
    assert supported in str(info.value)
    assert not isinstance(info.value, ModuleNotFoundError)
    assert set(SCHEMES) == {"memory", "redis", "rediss", "nats", "tls", "sqlite", "amqp", "amqps"}


@pytest.mark.parametrize(
    ("variable", "role"),
    [("TASKFLOW_BROKER_URL", "broker"), ("TASKFLOW_RESULTS_URL", "results")],
)
@pytest.mark.parametrize(
    "url",
    ["redis://127.0.0.1:6379/abc", "memory://?leese=1", "amqp://guest:guest@h/a/b"],
)
def test_environment_urls_are_as_strict_and_say_where_they_came_from(
    monkeypatch: pytest.MonkeyPatch, variable: str, role: str, url: str
) -> None:
    monkeypatch.setenv(variable, url)
    with pytest.raises(ConfigError) as info:
        App("from-env")
    assert variable in str(info.value)
    assert "guest:guest" not in str(info.value)


# -- schemes are case-insensitive ------------------------------------------------------
@pytest.mark.parametrize("url", ["REDIS://127.0.0.1:6379/0", "Redis://127.0.0.1:6379/0"])
def test_an_upper_case_redis_scheme_keeps_results_in_redis(url: str) -> None:
    with App("upper", broker=url) as app:
        assert type(app.broker).__name__ == "RedisBroker"
        assert type(app.results).__name__ == "RedisResultStore"


def test_upper_case_memory_and_nats_schemes_work() -> None:
    with App("upper", broker="MEMORY://?lease=4") as app:
        assert isinstance(app.broker, MemoryBroker) and app.broker.lease == 4.0
        assert isinstance(app.results, MemoryResultStore)
    with App("upper", broker="NATS://127.0.0.1:4222") as app:
        assert type(app.broker).__name__ == "NatsBroker"
        assert type(app.results).__name__ == "NatsResultStore"


# -- options come from the backend classes ---------------------------------------------
def test_url_options_are_the_backend_classes_keyword_arguments() -> None:
    from taskflow.brokers.nats import NatsBroker
    from taskflow.brokers.redis import RedisBroker
    from taskflow.results.nats import NatsResultStore
    from taskflow.results.redis import RedisResultStore

    assert url_options(MemoryBroker) == {"lease": float}
    assert url_options(MemoryResultStore) == {"max_entries": int}
    assert {"prefix", "lease", "connect_timeout"} <= set(url_options(RedisBroker))
    assert {"prefix", "connect_timeout"} <= set(url_options(RedisResultStore))
    assert {"prefix", "lease", "connect_timeout"} <= set(url_options(NatsBroker))
    assert {"prefix", "connect_timeout", "max_age"} <= set(url_options(NatsResultStore))


@pytest.mark.parametrize("scheme", ["redis", "nats"])
def test_a_shared_url_takes_the_options_of_both_the_broker_and_the_result_store(
    scheme: str,
) -> None:
    entry = SCHEMES[scheme]
    from taskflow.urls import load_backend, parse_url

    parsed = parse_url(f"{scheme}://127.0.0.1")
    broker_cls = load_backend(entry.broker, entry.extra, parsed)
    store_cls = load_backend(entry.results, entry.extra, parsed)
    values = {str: "tfurl", float: "2.5", int: "7"}
    # The TLS and credential options name files that must exist: tests/tls covers them.
    from taskflow._tls import CREDENTIAL_OPTIONS, NATS_OPTIONS, TLS_OPTIONS

    files = {*TLS_OPTIONS, *CREDENTIAL_OPTIONS, *NATS_OPTIONS}
    options = {
        name: kind
        for name, kind in {**url_options(broker_cls), **url_options(store_cls)}.items()
        if name not in files
    }
    query = "&".join(f"{name}={values[kind]}" for name, kind in sorted(options.items()))
    url = f"{scheme}://127.0.0.1/?{query}"
    assert type(broker_from_url(url)) is broker_cls
    assert type(results_from_url(url)) is store_cls


@pytest.mark.parametrize(
    ("url", "vhost"),
    [
        ("amqp://guest:guest@h:5672", "/"),
        ("amqp://guest:guest@h:5672/", "/"),
        ("amqp://guest:guest@h:5672//", "/"),  # how Celery users write the default
        ("amqp://guest:guest@h:5672/%2F", "/"),
        ("amqp://guest:guest@h:5672/shop", "shop"),
        ("amqps://guest:guest@h:5671/shop%2Fstaging", "shop/staging"),
    ],
)
def test_an_amqp_urls_path_is_its_virtual_host(url: str, vhost: str) -> None:
    assert amqp_vhost(parse_url(url).path) == vhost
    broker_from_url(url)  # builds (connects on first use)
