"""Helpers for the Redis integration tests: worker subprocesses and private servers."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import pytest
import redis

from taskflow._redis.scripts import BROKER_SCRIPTS, RESULT_SCRIPTS, load_script
from taskflow.brokers.base import Message
from taskflow.brokers.redis import RedisBroker
from taskflow.results.redis import RedisResultStore
from tests.conftest import require_service

ROOT = Path(__file__).resolve().parents[2]
APP_SPEC = "tests.integration.redis_worker_app:app"


def shared_url(lease: float) -> tuple[str, str]:
    """A URL on the shared server with a fresh prefix, and that prefix."""
    require_service("redis", "127.0.0.1", 6379)
    prefix = f"tfit{uuid.uuid4().hex[:10]}"
    return f"redis://127.0.0.1:6379/0?prefix={prefix}&lease={lease}", prefix


def fresh_url(lease: float) -> Iterator[str]:
    """For a fixture: a URL on the shared server with a fresh prefix (``shared_url``);
    every key under it is deleted afterwards."""
    address, prefix = shared_url(lease)
    yield address
    drop_prefix(address, prefix)


@asynccontextmanager
async def connected(url: str) -> AsyncIterator[RedisBroker]:
    """A :class:`RedisBroker` on ``url``, connected, closed on the way out."""
    broker = RedisBroker.from_url(url)
    await broker.connect()
    try:
        yield broker
    finally:
        await broker.close()


@asynccontextmanager
async def linked(
    url: str, *, link: bool = True
) -> AsyncIterator[tuple[RedisBroker, RedisResultStore]]:
    """A connected broker and result store on ``url``, the broker linked to the store's
    records (``Broker.link_records``) unless ``link`` is False."""
    broker, store = RedisBroker.from_url(url), RedisResultStore.from_url(url)
    await broker.connect()
    await store.connect()
    try:
        if link:
            assert broker.link_records(store.record_location())
        yield broker, store
    finally:
        await broker.close()
        await store.close()


async def queue_with_records(broker: RedisBroker, store: RedisResultStore, *ids: str) -> None:
    """Queued records and messages for ``ids`` on the default queue."""
    await store.create_many([(i, {"status": "queued", "attempts": 0}) for i in ids], None)
    await broker.publish([Message(i, "default", b"{}") for i in ids])


def private_url(data_dir: Path, lease: float) -> Iterator[str]:
    """For a fixture whose tests count the server's commands (``INFO commandstats`` counts
    every client's, so another test run on the shared server would be counted too): a URL
    on a redis-server of the test's own (:func:`private_redis`), with the bundled scripts
    loaded, as on a server that served them before (a script's first call on a new server
    is answered NOSCRIPT, then loaded and called again: three calls counted)."""
    with private_redis(data_dir, durable=False) as (port, _):
        client = redis.Redis(port=port)
        try:
            for name in (*BROKER_SCRIPTS, *RESULT_SCRIPTS):
                client.script_load(load_script(name))
        finally:
            client.close()
        yield f"redis://127.0.0.1:{port}/0?prefix=tfit&lease={lease}"


def count_checkouts(pool: Any) -> list[int]:
    """Count the connections taken from the asyncio pool ``pool`` from now on (the list's
    one item)."""
    calls = [0]
    checkout = pool.get_connection

    async def counted(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        return await checkout(*args, **kwargs)

    pool.get_connection = counted
    return calls


def script_calls(client: redis.Redis) -> int:
    """How many script calls (``EVALSHA``) the server has run."""
    stats = client.info("commandstats").get("cmdstat_evalsha", {})
    return int(stats.get("calls", 0))


def drop_prefix(url: str, prefix: str) -> None:
    """Delete every key the test created."""
    client = redis.Redis.from_url(url.split("?", 1)[0])
    try:
        for pattern in (f"{{{prefix}}}:*", f"{prefix}:*"):
            for key in client.scan_iter(match=pattern, count=1000):
                client.delete(key)
    finally:
        client.close()


def runs(url: str, prefix: str, task_id: str) -> list[int]:
    """Pids of the processes that ran ``task_id`` (in order)."""
    client = redis.Redis.from_url(url.split("?", 1)[0])
    try:
        return [int(x) for x in client.lrange(f"{prefix}:runs:{task_id}", 0, -1)]
    finally:
        client.close()


def start_worker(
    url: str,
    concurrency: int = 2,
    env: dict[str, str] | None = None,
    queues: tuple[str, ...] = (),
) -> subprocess.Popen[bytes]:
    """``taskflow worker`` for the integration app, in its own process (``env``: more of
    its environment; ``queues``: its ``-Q``, else the default queue)."""
    env = {**os.environ, "TASKFLOW_BROKER_URL": url, "PYTHONPATH": str(ROOT), **(env or {})}
    command = [
        sys.executable,
        "-m",
        "taskflow.cli.main",
        "worker",
        "-A",
        APP_SPEC,
        "-c",
        str(concurrency),
        "--loglevel",
        "warning",
        *(["-Q", ",".join(queues)] if queues else []),
    ]
    return subprocess.Popen(command, cwd=ROOT, env=env)


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    """Stop a worker process (SIGKILL if it does not go within 20 s)."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def wait_until(predicate: object, timeout: float, what: str) -> None:
    """Poll ``predicate`` (a callable) every 50 ms until true; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.05)
    pytest.fail(f"timed out after {timeout}s waiting for {what}")


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def private_redis(
    data_dir: Path, *, durable: bool = True
) -> Iterator[tuple[int, list[subprocess.Popen[bytes]]]]:
    """A redis-server of our own (so we may restart it); yields (port, [process]).
    ``durable``: with an fsync-always AOF (see :func:`start_redis`)."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed")
    port = free_port()
    procs = [start_redis(port, data_dir, durable=durable)]
    try:
        yield port, procs
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(10)


@contextmanager
def password_redis(data_dir: Path, password: str) -> Iterator[int]:
    """A private redis-server (nothing on disk) that requires ``password``; yields its
    port."""
    with private_redis(data_dir, durable=False) as (port, _):
        admin = redis.Redis(port=port)
        admin.config_set("requirepass", password)
        admin.close()
        yield port


@contextmanager
def config_client(port: int, password: str, acl_user: str) -> Iterator[redis.Redis]:
    """A client of a :func:`password_redis` server whose memory settings a test changes:
    ``maxmemory`` and its policy are put back, and ``acl_user`` deleted, afterwards."""
    client = redis.Redis(port=port, password=password)
    try:
        yield client
    finally:
        client.config_set("maxmemory-policy", "noeviction")
        client.config_set("maxmemory", "0")
        client.acl_deluser(acl_user)
        client.close()


def start_redis(port: int, data_dir: Path, *, durable: bool = True) -> subprocess.Popen[bytes]:
    """Start redis-server on ``port`` with an fsync-always AOF in ``data_dir`` (so a
    restart keeps the data; ``durable=False``: nothing on disk) and wait until it
    answers."""
    proc = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--save",
            "",
            *(("--appendonly", "yes", "--appendfsync", "always") if durable else ()),
            "--dir",
            str(data_dir),
            "--bind",
            "127.0.0.1",
        ],
        stdout=subprocess.DEVNULL,
    )
    client = redis.Redis(port=port)
    try:
        wait_until(lambda: _pings(client), 10, f"redis-server on port {port}")
    finally:
        client.close()
    return proc


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False
