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
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest

from taskflow import App, AsyncResult, BrokerError, Task, TaskStatus, current_task
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
    dead-lettered it as lost.

    With ``marks_again`` set, each delivery after the first comes as the broker marked its
    task running as it leased it (``Delivery.running_recorded``), as a broker linked to the
    result store does on finding the record running (not terminal) when it delivers the
    message again."""

    def __init__(self) -> None:
        super().__init__(lease=LEASE)
        self.full = threading.Event()
        self.spared: set[str] = set()
        self.one_each = False
        self.marks_again = False
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
            if self.marks_again:
                delivery.running_recorded = delivery.delivery_count >= 2
        return got

    def wait_delivered(self, message_id: str, times: int = 1) -> None:
        """Until the worker has taken ``message_id`` for the ``times``-th time."""
        key = (message_id, times)
        assert self.delivered.setdefault(key, threading.Event()).wait(WAIT)

    def _settle_unless_full(self, mid: str, token: int, action: str, **kw: Any) -> bool:
        if action == "touch" and self.full.is_set() and mid not in self.spared:
            raise BrokerError("command not allowed when used memory > 'maxmemory'")
        return self._settle(mid, token, action, **kw)

    def wait_lease_over(self, message_id: str) -> None:
        """Until the broker would deliver ``message_id`` again (its lease ran out)."""
        deadline = time.monotonic() + WAIT
        while True:
            with self._state.lock:
                stored = self._state.messages[message_id]
                if stored.deadline <= self.clock.time():
                    return
            assert time.monotonic() < deadline, "the lease never ran out"
            time.sleep(0.01)  # polls the broker's lease, which runs on its real clock

    def rewrite(self, message_id: str, old: bytes, new: bytes) -> None:
        """Replace ``old`` by ``new`` in the message's body, as another message sent under
        its id would (its next delivery carries the new body)."""
        with self._state.lock:
            stored = self._state.messages[message_id]
            assert old in stored.body
            stored.body = stored.body.replace(old, new)

    def send_another_under_its_id(self, send: Callable[[int], AsyncResult[Any]]) -> str:
        """``send(1)`` while renewals are refused; once the worker has it, the message turns
        into another sent under its id (with argument 2), which the broker delivers to the
        worker again once the lease has run out; then renewals go through again. Its id."""
        self.full.set()
        sent = send(1)
        self.wait_delivered(sent.id)  # into the worker's buffer
        self.rewrite(sent.id, b'"args":[1]', b'"args":[2]')
        self.wait_delivered(sent.id, times=2)  # the other message, to this worker
        self.full.clear()
        return sent.id

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
    yield from _said("ran out before the task started")


@pytest.fixture
def renewing() -> Iterator[Said]:
    yield from _said("renewing the lease of task")


def _said(text: str) -> Iterator[Said]:
    handler = Said(text)
    logger = logging.getLogger("taskflow.worker")
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)


@pytest.fixture
def broker() -> FullBroker:
    return FullBroker()


class WritesStore(FlakyStore):
    """Keeps the changes of every record write that went through."""

    def __init__(self) -> None:
        super().__init__()
        self.written: list[dict[str, Any]] = []

    async def update(
        self, task_id: str, changes: dict[str, Any], ttl: float | None = None
    ) -> dict[str, Any] | None:
        record = await super().update(task_id, changes, ttl)
        self.written.append(dict(changes))
        return record


@pytest.fixture
def store() -> WritesStore:
    return WritesStore()


def noting_deliveries(app: App) -> tuple[Task[[], str], list[int]]:
    """A task of ``app`` that returns "done", and the delivery each of its runs was on."""
    deliveries: list[int] = []

    @app.task
    def job() -> str:
        ctx = current_task()
        assert ctx is not None
        deliveries.append(ctx.delivery)
        return "done"

    return job, deliveries


@pytest.fixture
def full_app(broker: FullBroker, store: WritesStore) -> Iterator[App]:
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
    with running_worker(full_app, concurrency=1, prefetch_buffer=1) as worker:
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
    assert worker.stats()["processed"] == 1, "counted as processed where it did not run"


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


def test_a_task_delivered_again_while_it_waits_here_for_a_slot_runs_once_in_its_slot(
    full_app: App, broker: FullBroker, caplog: pytest.LogCaptureFixture
) -> None:
    # Its renewals refused for a whole lease while it waits in the worker's buffer, the
    # message is delivered again, to this same worker: the waiting task takes the new
    # delivery. Two jobs of one task id would share the worker's account of its slots: the
    # one whose lease ran out, leaving, would take the other off it, and a further task
    # would start beside it (concurrency + 1, the running task missing from the heartbeat).
    go = threading.Event()
    hold = threading.Event()
    lock = threading.Lock()
    bodies: list[str] = []  # every body started, in order
    now: set[str] = set()  # the bodies running now
    peak = [0]
    two_running = threading.Event()

    def body(name: str) -> None:
        with lock:
            bodies.append(name)
            now.add(name)
            peak[0] = max(peak[0], len(now))
            if len(now) == 2 and "quick" in now:
                two_running.set()
        try:
            assert hold.wait(WAIT)
        finally:
            with lock:
                now.discard(name)

    @full_app.task
    def slow() -> None:
        assert go.wait(WAIT)

    @full_app.task
    def quick() -> None:
        body("quick")

    @full_app.task
    def filler(n: int) -> None:
        body(f"filler-{n}")

    try:
        with (
            caplog.at_level(logging.WARNING, logger="taskflow.worker"),
            running_worker(full_app, concurrency=2, prefetch_buffer=4, heartbeat=0.05) as worker,
        ):
            broker.spared.update(slow.delay().id for _ in range(2))  # both slots, renewed
            broker.full.set()
            sent = quick.delay()
            broker.wait_delivered(sent.id, times=2)  # to this worker again, still buffered
            broker.full.clear()
            broker.spared.update(filler.delay(n).id for n in range(2))
            go.set()  # the slots free up: quick and a filler start
            assert two_running.wait(WAIT)
            seen = worker.heartbeat.beats
            assert worker.heartbeat.wait_beats(seen + 2, WAIT)
            [entry] = full_app.admin.workers()
            with lock:
                running, started = set(now), list(bodies)
            hold.set()
            assert sent.get(timeout=WAIT) is None
    finally:
        go.set()
        hold.set()
    assert started.count("quick") == 1, "the task ran twice"
    assert peak[0] == 2, f"{peak[0]} bodies ran at once on 2 slots"
    assert len(running) == 2 and sent.id in entry.running, (running, entry.running)
    assert bodies.count("quick") == 1
    [queue] = full_app.admin.queues()
    assert (queue.ready, queue.scheduled, queue.running, queue.dead) == (0, 0, 0, 0)
    assert "while it waits here" in caplog.text


def test_a_task_delivered_again_while_it_renews_its_lease_to_start_runs_on_the_new_one(
    full_app: App,
    broker: FullBroker,
    store: FlakyStore,
    renewing: Said,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Its running record written only once its lease ran out, the task renews the lease
    # before it starts; the broker refuses, and meanwhile delivers the message again, to
    # this worker: the task starts on the new delivery, once, instead of giving up.
    job, deliveries = noting_deliveries(full_app)
    broker.full.set()
    broker.one_each = True  # no second delivery until allowed
    store.down.set()
    sent = job.delay()
    with (
        caplog.at_level(logging.WARNING, logger="taskflow.worker"),
        running_worker(full_app, concurrency=1),
    ):
        assert store.refused_some.wait(WAIT)  # taken; marking it running is refused
        broker.wait_lease_over(sent.id)
        store.down.clear()
        assert renewing.seen.wait(WAIT)  # written; its renewal to start is refused
        broker.one_each = False
        broker.wait_delivered(sent.id, times=2)
        broker.full.clear()
        assert sent.get(timeout=WAIT) == "done"
    assert deliveries == [2], "not run once, on the second delivery"
    assert "while it waits here" in caplog.text
    assert "ran out before the task started" not in caplog.text
    [queue] = full_app.admin.queues()
    assert (queue.ready, queue.scheduled, queue.running, queue.dead) == (0, 0, 0, 0)


def test_another_message_under_a_held_task_id_is_not_taken_by_the_held_task(
    full_app: App, broker: FullBroker
) -> None:
    # A redelivery is taken by the held job only if it is the same message: one sent again
    # under the id meanwhile runs its own arguments, and the held job, its lease lost,
    # leaves without taking the other's slot entry.
    go = threading.Event()
    ran: list[int] = []
    done = threading.Event()

    @full_app.task
    def slow() -> None:
        assert go.wait(WAIT)

    @full_app.task(store_result=False)
    def echo(n: int) -> None:
        ran.append(n)
        done.set()

    broker.spared.add(slow.delay().id)  # it runs on, its lease renewed
    try:
        with running_worker(full_app, concurrency=1, prefetch_buffer=2):
            broker.send_another_under_its_id(echo.delay)  # buffered behind the slow one
            go.set()
            assert done.wait(WAIT)
    finally:
        go.set()
    assert ran == [2], "the held task ran in place of the other message"
    [queue] = full_app.admin.queues()
    assert (queue.ready, queue.scheduled, queue.running, queue.dead) == (0, 0, 0, 0)


def test_a_task_given_up_here_leaves_the_slots_of_another_message_under_its_id_as_they_are(
    full_app: App, broker: FullBroker, said: Said
) -> None:
    # Two jobs under one task id: the first, its lease lost while it waited, and another
    # message sent under the id meanwhile. Both take a slot; the first, finding its lease
    # lost, gives up and leaves: only its own entry goes, and the worker's account of its
    # slots (what the heartbeat lists) still holds the other while its body runs.
    gate: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []
    both_wait = threading.Event()
    hold = threading.Event()
    running = threading.Event()
    ran: list[int] = []

    @full_app.task
    async def slow() -> None:
        # Both on the worker's loop, on one event: set, it frees both slots in one turn of
        # the loop, so that the two jobs of the id take them before either goes on.
        if not gate:
            gate.append((asyncio.get_running_loop(), asyncio.Event()))
        else:
            both_wait.set()
        await gate[0][1].wait()

    def free_both_slots() -> None:
        if gate:
            loop, event = gate[0]
            loop.call_soon_threadsafe(event.set)

    @full_app.task(store_result=False)
    def echo(n: int) -> None:
        ran.append(n)
        running.set()
        assert hold.wait(WAIT)

    broker.spared.update(slow.delay().id for _ in range(2))  # both slots, renewed
    try:
        with running_worker(full_app, concurrency=2, prefetch_buffer=4, heartbeat=0.05) as worker:
            assert both_wait.wait(WAIT)
            sent = broker.send_another_under_its_id(echo.delay)  # buffered behind the slow ones
            free_both_slots()  # the two jobs of the id take them
            assert running.wait(WAIT)
            assert said.seen.wait(WAIT)  # the first gave up, and left
            seen = worker.heartbeat.beats
            assert worker.heartbeat.wait_beats(seen + 2, WAIT)
            [entry] = full_app.admin.workers()
            hold.set()
    finally:
        free_both_slots()
        hold.set()
    assert ran == [2]
    assert sent in entry.running, "a running task is missing from the heartbeat"


def test_a_task_delivered_again_while_its_running_record_is_written_writes_its_fields_once(
    full_app: App, broker: FullBroker, store: WritesStore
) -> None:
    # The worker marks the task running itself (the first delivery was not marked); the
    # write waits out an outage longer than the lease, and meanwhile the message comes
    # again, to this worker, marked running by the broker. The job takes the new delivery;
    # its record's fields are those of the write it made, not to be completed again as for
    # a delivery the broker marked.
    job, deliveries = noting_deliveries(full_app)
    broker.marks_again = True
    broker.full.set()
    store.down.set()
    sent = job.delay()
    with running_worker(full_app, concurrency=1):
        assert store.refused_some.wait(WAIT)  # taken; marking it running is refused
        broker.wait_delivered(sent.id, times=2)  # to this worker again, marked
        broker.full.clear()
        store.down.clear()
        assert sent.get(timeout=WAIT) == "done"
    assert len(deliveries) == 1 and deliveries[0] >= 2, deliveries
    fields = [w for w in store.written if "worker" in w]
    assert len(fields) == 1 and fields[0]["status"] == TaskStatus.RUNNING.value, (
        "the running record's fields were written again",
        store.written,
    )
