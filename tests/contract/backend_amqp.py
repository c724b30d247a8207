"""RabbitMQ backend for the broker contract suite: each test gets its own prefix on the
shared server, and closing the broker deletes every queue and exchange it declared.

RabbitMQ keeps no results, so there is no result-store factory here."""

from __future__ import annotations

import contextlib
import uuid
from typing import Any

import amqp

from taskflow.brokers import _kombu_topology as topo
from taskflow.brokers.kombu import KombuBroker
from taskflow.clock import Clock
from tests.conftest import require_service

URL = "amqp://guest:guest@127.0.0.1:5672"


def delete_topology(prefix: str, queues: set[str]) -> None:
    """Delete the queues of ``queues`` and the shared exchanges under ``prefix``."""
    names = topo.Names(prefix)
    conn = amqp.Connection("127.0.0.1:5672", userid="guest", password="guest")
    conn.connect()
    try:
        channel = conn.channel()

        def drop(kind: str, name: str) -> None:
            nonlocal channel
            try:
                if kind == "queue":
                    channel.queue_delete(name)
                else:
                    channel.exchange_delete(name)
            except amqp.exceptions.AMQPError:
                channel = conn.channel()

        def exists(name: str) -> bool:
            nonlocal channel
            try:
                channel.queue_declare(name, passive=True)
            except amqp.exceptions.NotFound:
                channel = conn.channel()
                return False
            return True

        levels = [str(k) for k in range(topo.LEVEL_BITS)]
        tops = 0
        for queue in queues:
            for name in (names.work(queue), names.dead(queue), names.paused_marker(queue)):
                drop("queue", name)
            for level in levels:
                drop("queue", names.level(queue, level))
            i = 0
            while i < topo.TOP_LEVELS and exists(names.level(queue, f"t{i}")):
                drop("queue", names.level(queue, f"t{i}"))
                i += 1
            tops = max(tops, i)
        for level in levels + [f"t{i}" for i in range(tops)]:
            drop("exchange", names.after(level))
        drop("exchange", names.control)
    finally:
        with contextlib.suppress(Exception):
            conn.close()


class _CleanKombuBroker(KombuBroker):
    """A KombuBroker that deletes what it declared when first closed."""

    _cleaned = False

    async def close(self) -> None:
        await super().close()
        if not self._cleaned:
            self._cleaned = True
            delete_topology(self.prefix, set(self.io.used))


async def amqp_broker(clock: Clock | None, lease: float) -> KombuBroker:
    """An unconnected broker on a fresh prefix (the server keeps time: ``clock`` unused)."""
    require_service("rabbitmq", "127.0.0.1", 5672)
    return _CleanKombuBroker(URL, prefix=f"tftest{uuid.uuid4().hex[:12]}", lease=lease)


def register(brokers: dict[str, Any], stores: dict[str, Any]) -> None:
    """Add the amqp broker factory to the contract suite's registry."""
    brokers["amqp"] = amqp_broker
