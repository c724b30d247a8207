"""A Redis server that may delete keys when it is full is reported when the broker or the
result store connects: evicted keys are queued tasks, records and idempotency keys gone
without an error."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator

import pytest
import redis

from taskflow._redis import connection
from taskflow.brokers.redis import RedisBroker
from taskflow.results.redis import RedisResultStore

from .redis_helpers import config_client, password_redis

pytestmark = pytest.mark.integration

PASSWORD = "hunter2-evict"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """A private redis-server that requires :data:`PASSWORD` (its configuration is changed
    by these tests); yields its port."""
    with password_redis(tmp_path_factory.mktemp("evict"), PASSWORD) as port:
        yield port


@pytest.fixture
def admin(server: int, monkeypatch: pytest.MonkeyPatch) -> Iterator[redis.Redis]:
    """A client of :func:`server` whose configuration changes are undone afterwards; the
    process forgets which servers it has looked at (each test connects anew)."""
    monkeypatch.setattr(connection, "_CHECKED", set())
    with config_client(server, PASSWORD, "tfnoconfig") as client:
        yield client


def url(port: int, user: str = "", password: str = PASSWORD) -> str:
    return f"redis://{user}:{password}@127.0.0.1:{port}/0?prefix=tfevict"


def connect_and_close(*backends: RedisBroker | RedisResultStore) -> None:
    """Connect each of ``backends`` in turn, then close them."""

    async def go() -> None:
        try:
            for backend in backends:
                await backend.connect()
        finally:
            for backend in backends:
                await backend.close()

    asyncio.run(go())


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "taskflow.redis"]


def test_a_server_that_evicts_is_named_with_its_policy(
    server: int, admin: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    admin.config_set("maxmemory-policy", "allkeys-lru")
    admin.config_set("maxmemory", str(512 * 1024 * 1024))
    broker = RedisBroker.from_url(url(server))
    with caplog.at_level(logging.INFO, logger="taskflow.redis"):
        connect_and_close(broker)

    [warning] = [r for r in caplog.records if r.name == "taskflow.redis"]
    assert warning.levelno == logging.WARNING
    text = warning.getMessage()
    assert f"redis broker at redis://:***@127.0.0.1:{server}/0" in text
    assert "maxmemory-policy is allkeys-lru" in text
    assert "536870912 bytes" in text
    assert "set maxmemory-policy to noeviction" in text
    assert PASSWORD not in text


def test_a_policy_without_a_limit_is_named_too(
    server: int, admin: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    # volatile-* policies delete only keys with a time to live: records with an expiry and
    # idempotency keys. Without maxmemory nothing is deleted yet, but a limit can be set on
    # the running server at any time.
    admin.config_set("maxmemory-policy", "volatile-ttl")
    store = RedisResultStore.from_url(url(server))
    with caplog.at_level(logging.INFO, logger="taskflow.redis"):
        connect_and_close(store)

    [text] = warnings_of(caplog)
    assert f"redis result store at redis://:***@127.0.0.1:{server}/0" in text
    assert "maxmemory-policy is volatile-ttl" in text
    assert "no limit is set now" in text


def test_noeviction_is_not_reported(
    server: int, admin: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    admin.config_set("maxmemory", str(512 * 1024 * 1024))
    broker = RedisBroker.from_url(url(server))
    with caplog.at_level(logging.DEBUG, logger="taskflow.redis"):
        connect_and_close(broker)

    assert warnings_of(caplog) == []


def test_one_warning_per_server_for_the_broker_and_store_of_a_process(
    server: int, admin: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    admin.config_set("maxmemory-policy", "allkeys-random")
    broker, store = RedisBroker.from_url(url(server)), RedisResultStore.from_url(url(server))
    with caplog.at_level(logging.INFO, logger="taskflow.redis"):
        connect_and_close(broker, store)
        connect_and_close(broker)  # a reconnect does not repeat it

    [text] = warnings_of(caplog)
    assert "maxmemory-policy is allkeys-random" in text


def test_a_server_that_hides_its_configuration_still_connects(
    server: int, admin: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    # As on managed services that rename or deny CONFIG: the broker works, and the log
    # says the check could not be made.
    admin.config_set("maxmemory-policy", "allkeys-lru")
    admin.acl_setuser(
        "tfnoconfig",
        enabled=True,
        passwords=["+noconfig-pw"],
        keys=["*"],
        channels=["*"],
        commands=["+@all", "-config"],
    )
    broker = RedisBroker.from_url(url(server, "tfnoconfig", "noconfig-pw"))

    async def connect_and_look() -> dict[str, int]:
        await broker.connect()
        try:
            return dict(await broker.depth("default"))
        finally:
            await broker.close()

    with caplog.at_level(logging.INFO, logger="taskflow.redis"):
        assert asyncio.run(connect_and_look())["ready"] == 0

    [record] = [r for r in caplog.records if r.name == "taskflow.redis"]
    assert record.levelno == logging.INFO
    text = record.getMessage()
    assert "could not read the server's maxmemory-policy" in text
    assert "NOPERM" in text or "no permissions" in text
    assert "noconfig-pw" not in text
