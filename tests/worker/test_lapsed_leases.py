"""A message whose lease ran out before its body started is not run: the broker has
delivered it to another worker (or will), which runs it.

The lease of a message a worker holds lapses when its renewals fail for a lease's length:
a Redis server at its ``maxmemory`` refuses them (they are writes), as it refuses the
write that marks the task running. Once the server takes writes again, each worker that
held the message would start it; only the one whose lease still holds does.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import pytest

from taskflow import App, BrokerError, TaskStatus
from taskflow.brokers import MemoryBroker
from taskflow.brokers.base import Delivery, FetchResult
from taskflow.testing import running_worker
from tests.worker.test_resilience import FlakyStore

WAIT = 10.0
LEASE = 0.5


class FullBroker(MemoryBroker):
    """Refuses lease renewals while ``full`` is set, as a full Redis server does (but of
    the messages in ``spared``).

    With ``one_each`` set, the worker is handed nothing more once it has taken a message
    (until ``full`` is cleared), so that another worker takes it again once its lease has
    run out: else the worker itself could take it again each time, until the broker
    dead-lettered it as lost."""

    def __init__(self) -> None:
        super().__init__(lease=LEASE)
        self.full = threading.Event()
        self.spared: set[str] = set()
        self.one_each = False
        self._settle_delivery = self._settle_unless_full
        self.delivered: dict[tuple[str, int], threading.Event] = {}

    async def fetch(self, queues: Sequence[str], max_messages: int, timeout: float) -> FetchResult:
        taken = any(e.is_set() for e in self.delivered.values())
        if self.one_each and self.full.is_set() and taken:
            await asyncio.sleep(min(timeout, 0.05))  # as a fetch that found nothing waits
            return FetchResult()
        got = await super().fetch(queues, max_messages, timeout)
        for delivery in got:
            key = (delivery.id, delivery.delivery_count)
            self.delivered.setdefault(key, threading.Event()).set()
        return got

    def wait_delivered(self, message_id: str, times: int = 1) -> None:
        """Until the worker has taken ``message_id`` for the ``times``-th time."""
        key = (message_id, times)
        assert self.delivered.setdefault(key, threading.Event()).wait(WAIT)

    def _settle_unless_full(self, mid: str, token: int, action: str, **kw: Any) -> bool:
        if action == "touch" and self.full.is_set() and mid not in self.spared:
            raise BrokerError("command not allowed when used memory > 'maxmemory'")
        return self._settle(mid, token, action, **kw)

    def run_elsewhere(self, message_id: str) -> None:
        """Another worker takes the message again, once its lease has run out, and runs
        it (acks it)."""
        got: list[Delivery] = self.kernel_call(MemoryBroker.fetch(self, ["default"], 1, WAIT))
        assert [d.id for d in got] == [message_id], "the lease never ran out"
        # Delivered at least twice: the worker may have taken it again too.
        assert got[0].delivery_count >= 2
        assert self.kernel_call(got[0].ack())

    kernel_call: Any = None


class Said(logging.Handler):
    """Sets ``seen`` once a record holding ``text`` is logged."""

    def __init__(self, text: str) -> None:
        super().__init__(logging.WARNING)
        self.text = text
        self.seen = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if self.text in record.getMessage():
            self.seen.set()


@pytest.fixture
def said() -> Iterator[Said]:
    handler = Said("ran out before the task started")
    logger = logging.getLogger("taskflow.worker")
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)


@pytest.fixture
def broker() -> FullBroker:
    return FullBroker()


@pytest.fixture
def store() -> FlakyStore:
    return FlakyStore()


@pytest.fixture
def full_app(broker: FullBroker, store: FlakyStore) -> Iterator[App]:
    application = App("lapsed", broker=broker, results=store)
    broker.kernel_call = application.kernel.call
    yield application
    application.close()


def test_a_task_whose_lease_ran_out_while_its_record_could_not_be_written_is_not_run(
    full_app: App, broker: FullBroker, store: FlakyStore, said: Said
) -> None:
    ran: list[int] = []

    @full_app.task
    def job() -> str:
        ran.append(1)
        said.seen.set()  # either way, the worker is done with it
        return "done"

    broker.full.set()
    broker.one_each = True
    store.down.set()
    result = job.delay()
    with running_worker(full_app):
        # The worker took the message and keeps trying to mark it running.
        assert store.refused_some.wait(WAIT)
        broker.run_elsewhere(result.id)
        broker.full.clear()
        store.down.clear()
        # The worker's write of the record goes through now; the task is another's.
        assert said.seen.wait(WAIT)
        assert ran == [], "the task ran twice"
    assert ran == []


def test_a_task_waiting_for_a_slot_while_its_lease_ran_out_is_not_run(
    full_app: App, broker: FullBroker, said: Said
) -> None:
    first_started = threading.Event()
    let_first_finish = threading.Event()
    ran: list[str] = []

    @full_app.task
    def slow() -> None:
        first_started.set()
        assert let_first_finish.wait(WAIT)

    @full_app.task(store_result=False)  # nothing is written before it starts
    def quick() -> None:
        ran.append("quick")
        said.seen.set()  # either way, the worker is done with it

    broker.spared.add(slow.delay().id)  # it runs on, its lease renewed
    with running_worker(full_app, concurrency=1, prefetch_buffer=1):
        assert first_started.wait(WAIT)
        broker.full.set()
        sent = quick.delay()
        broker.wait_delivered(sent.id)  # into the worker's buffer, behind the slow one
        broker.run_elsewhere(sent.id)
        broker.full.clear()
        let_first_finish.set()
        assert said.seen.wait(WAIT)
        assert ran == [], "the task ran twice"
    assert ran == []


def test_a_task_delivered_again_to_the_worker_running_it_runs_once_and_is_settled(
    full_app: App, broker: FullBroker, caplog: pytest.LogCaptureFixture
) -> None:
    # Its renewals refused for a whole lease while the body runs, the message is delivered
    # again, here: the running body takes the new delivery and settles it.
    started = threading.Event()
    finish = threading.Event()
    ran: list[int] = []

    @full_app.task(store_result=False)  # no record would stop a second run
    def long() -> str:
        ran.append(1)
        started.set()
        assert finish.wait(WAIT)
        return "done"

    with (
        caplog.at_level(logging.WARNING, logger="taskflow.worker"),
        running_worker(full_app, concurrency=2) as worker,
    ):
        events = worker.subscribe()
        sent = long.delay()
        assert started.wait(WAIT)
        broker.full.set()
        broker.wait_delivered(sent.id, times=2)  # to this worker, its only consumer
        broker.full.clear()
        finish.set()
        finished = events.get(WAIT)  # announced once its message was settled
        assert (finished.task_id, finished.status) == (sent.id, TaskStatus.SUCCEEDED.value)
    assert ran == [1], "the task ran twice"
    [queue] = full_app.admin.queues()
    assert (queue.ready, queue.scheduled, queue.running, queue.dead) == (0, 0, 0, 0)
    assert "while its body runs here" in caplog.text
