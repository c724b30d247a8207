"""``app.admin.alarms()`` (and ``stats().alarms``) on a private Redis server: what would
stop or endanger delivery is named before it happens, the password masked."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from taskflow import App
from taskflow.brokers.base import ALARM_SHARE

from .redis_helpers import config_client, password_redis, private_redis, wait_until

pytestmark = pytest.mark.integration

PASSWORD = "hunter2-alarm"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    with password_redis(tmp_path_factory.mktemp("alarms"), PASSWORD) as port:
        yield port


@pytest.fixture
def admin(server: int) -> Iterator[redis.Redis]:
    with config_client(server, PASSWORD, "tfnoinfo") as client:
        yield client


def app_on(port: int, user: str = "", password: str = PASSWORD) -> App:
    return App("alarms", broker=f"redis://{user}:{password}@127.0.0.1:{port}/0?prefix=tfalarm")


def test_a_healthy_server_has_no_alarms(server: int, admin: redis.Redis) -> None:
    with app_on(server) as app:
        assert app.admin.alarms() == []
        assert app.admin.stats().alarms == []


def test_memory_near_maxmemory_is_an_alarm_before_the_server_refuses_tasks(
    server: int, admin: redis.Redis
) -> None:
    with app_on(server) as app:
        app.admin.stats()  # connected: what its connections use counts
        used = int(admin.info("memory")["used_memory"])
        admin.config_set("maxmemory", int(used / ALARM_SHARE) + 200_000)  # under the mark
        assert app.admin.alarms() == []
        admin.config_set("maxmemory", int(used / 0.93))  # over it, not full
        [alarm] = app.admin.alarms()
        assert alarm.startswith("redis at redis://:***@127.0.0.1:")
        assert "of its maxmemory in use" in alarm and "refuses new tasks" in alarm
        assert PASSWORD not in alarm
        [again] = app.admin.stats().alarms
        assert "of its maxmemory in use" in again


def test_a_policy_that_deletes_keys_is_an_alarm(server: int, admin: redis.Redis) -> None:
    admin.config_set("maxmemory", 512 * 1024 * 1024)
    admin.config_set("maxmemory-policy", "allkeys-lru")
    with app_on(server) as app:
        [alarm] = app.admin.alarms()
    assert "maxmemory-policy is allkeys-lru" in alarm
    assert "set it to noeviction" in alarm


def test_a_user_who_may_not_read_info_gets_no_alarms_and_stats_still_work(
    server: int, admin: redis.Redis
) -> None:
    admin.config_set("maxmemory", 512 * 1024 * 1024)  # an alarm, for a user who may look
    admin.config_set("maxmemory-policy", "allkeys-lru")
    admin.acl_setuser(
        "tfnoinfo", enabled=True, passwords=["+pw"], keys=["*"], channels=["*"],
        commands=["+@all", "-info"],
    )  # fmt: skip
    with app_on(server, "tfnoinfo", "pw") as app:
        assert app.admin.alarms() == []
        assert app.admin.stats().alarms == []


def test_a_failed_background_save_is_an_alarm_while_writes_are_refused() -> None:
    # The data directory is /proc: the server starts, but cannot write a snapshot there.
    with private_redis(Path("/proc"), durable=False) as (port, _):
        server = redis.Redis(port=port)
        server.config_set("save", "3600 1")  # Redis's default save points
        try:
            with App("alarms", broker=f"redis://127.0.0.1:{port}/0?prefix=tfalarm") as app:
                assert app.admin.alarms() == []
                server.bgsave()
                wait_until(
                    lambda: server.info("persistence")["rdb_last_bgsave_status"] == "err",
                    10,
                    "the save to fail",
                )
                with pytest.raises(redis.ResponseError, match="MISCONF"):
                    server.set("k", str(time.time()))
                [alarm] = app.admin.alarms()
                assert "last background save failed" in alarm
                assert "refuses every write" in alarm
        finally:
            server.config_set("save", "")  # else it will not stop without a final save
            server.close()
