"""The broker interface: a small transport over bytes, with ack on the delivery.

A broker moves opaque message bodies between producers and workers. It never decodes
payloads. Every broker must pass ``tests/contract/test_broker_contract.py``.

Semantics every broker implements:

* ``publish`` is all-or-nothing for one call; a bounded queue that would overflow raises
  :class:`~taskflow.errors.QueueFull` and publishes nothing.
* Within a queue, higher ``priority`` (0-9) is delivered first, FIFO among equals.
* A message with ``eta`` in the future is held by the broker and delivered when due.
* ``fetch`` returns at most ``max_messages`` deliveries, waiting up to ``timeout`` seconds
  for the first one (push-based: it wakes as soon as something is published).
* A delivery is leased: if neither acked, nacked, retried nor dead-lettered before its lease
  runs out, the broker delivers it again (``delivery_count`` + 1). Once ``delivery_count``
  would exceed ``max_deliveries`` the message is dead-lettered with reason ``worker_lost``
  and reported in ``FetchResult.lost``. ``touch`` renews a lease at any time, right after the
  fetch included; ``Delivery.lease`` is the lease that really applies.
* A message whose broker framing is malformed (written by hand or by a broken producer)
  is dead-lettered alone with reason ``undecodable`` and reported in ``FetchResult.lost``; the
  rest of the batch is delivered. A message is never lost half-way.
* ``ack``/``nack``/``retry``/``dead_letter`` are fenced: after the lease was lost and the
  message redelivered, the old delivery's calls do nothing and return ``False``.
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final

from ..errors import BrokerError, PayloadError, Unsupported
from ..urls import mask_url
from .limits import ClusterLimiter

__all__ = [
    "ALARM_SHARE",
    "Broker",
    "BrokerAdmin",
    "Capabilities",
    "CloseIds",
    "DeadLetter",
    "Delivery",
    "FetchResult",
    "Message",
    "RecordClose",
    "StoppedPartWay",
    "Waiting",
    "refuse_oversized",
    "stopped_part_way",
]


CloseIds = Callable[[list[str]], Awaitable[None]]
"""``close(ids)``: what a purge does to the task records of the messages it drops."""


@dataclass(frozen=True, slots=True)
class RecordClose:
    """How a purge closes the task records of the messages it drops
    (:meth:`BrokerAdmin.purge_batch_closing`): the fields written, with their time to live,
    for a broker that writes its result store's records itself, and ``close(ids)``, which
    writes them through the result store, for any other."""

    changes: Mapping[str, Any]
    ttl: float | None
    close: CloseIds


class StoppedPartWay(BrokerError):
    """An action over many messages, made one at a time, that failed after some.

    ``done`` are the ids it had finished with: for :meth:`BrokerAdmin.requeue` those
    whose message is live again (their dead letter removed, or, if removing it failed,
    still there beside it); for ``purge_ids``/``purge_batch`` and ``discard_dead`` those
    removed. The one under way when it failed is not among them: its outcome is unknown
    (a purge's or a discard's message may be gone; a requeue's keeps its dead letter).
    The message is the error that stopped it.
    """

    def __init__(self, message: str, done: Sequence[str]) -> None:
        super().__init__(message)
        self.done = tuple(done)


def refuse_oversized(messages: Sequence[Message], limit: int, where: str) -> None:
    """PayloadError for the first body over ``limit`` bytes, naming its task and the sizes
    (never the value), before anything is published; ``where`` completes "over the N
    bytes ...": whose limit it is (a broker builds it once: this runs on every send)."""
    for m in messages:
        if len(m.body) > limit:
            raise PayloadError(
                f"task {m.task or '?'}[{m.id}]: the message is {len(m.body):,} bytes, over "
                f"the {limit:,} {where}; nothing was enqueued"
            )


@contextlib.contextmanager
def stopped_part_way(done: list[str]) -> Iterator[None]:
    """Raise an error of the block as :class:`StoppedPartWay` naming ``done`` (the ids the
    block adds as it finishes each) if it had finished any; raised as it is otherwise."""
    try:
        yield
    except StoppedPartWay:
        raise
    except Exception as exc:
        if done:
            raise StoppedPartWay(str(exc), done) from exc
        raise


@dataclass(frozen=True, slots=True)
class Message:
    """An outgoing message. ``eta`` is epoch seconds (None: deliver now). ``task`` names
    the task in errors (a broker never reads the body to find it)."""

    id: str
    queue: str
    body: bytes
    priority: int = 0
    eta: float | None = None
    max_deliveries: int = 1
    task: str = ""


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What a broker can do, as data (never probed with ``hasattr``)."""

    delays: bool = True
    """The broker holds ``eta`` messages itself."""
    priorities: bool = True
    """Strict 0-9 priority within a queue."""
    leases: bool = True
    """Unacked deliveries come back after their lease; ``touch`` renews."""
    dead_letter: bool = True
    """``dead_letter`` keeps the message in a per-queue dead-letter list."""
    blocking_publish: bool = False
    """``publish_blocking`` is thread-safe and needs no event loop."""
    fork_safe: bool = False
    """``publish_blocking`` opens connections of its own in a process forked from one
    that used the broker (a ``delay()`` there is safe; the app's loop calls still refuse)."""
    control: bool = True
    """``send_control``/``control_messages`` reach every worker of the app."""
    fetch_buffer: float = 0.5
    """A worker's default ``prefetch_buffer``, as a multiple of its concurrency (at least
    1): larger where a fetch costs more than a task takes to run, so that the next batch
    arrives before the slots run dry."""
    short_fetch_buffer: int = 0
    """While a worker's bodies run short (under 20 ms on average), its default buffer holds
    this many messages or twice its concurrency, whichever is more: more where a fetch
    takes milliseconds, so that the next batch arrives before the held messages run out."""


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A dead-lettered message with why and when."""

    id: str
    queue: str
    body: bytes
    reason: str
    error: str | None = None
    failed_at: float = 0.0
    delivery_count: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Waiting:
    """A message an operator looks at in place (nothing is removed or leased)."""

    id: str
    queue: str
    body: bytes
    state: str
    """``ready``, ``scheduled`` or ``running`` (delivered, not yet settled)."""
    priority: int = 0
    eta: float | None = None
    """When a scheduled message is due (epoch seconds)."""
    delivery_count: int = 0
    max_deliveries: int = 1


class FetchResult(list["Delivery"]):
    """What one ``fetch`` brought: the deliveries (the list itself) and ``lost``, the messages
    this broker instance dead-lettered on its own since its previous fetch, so that the
    worker can finish their records: reason ``worker_lost`` (deliveries ran out) or
    ``undecodable`` (malformed broker framing). Each is reported exactly once, by the
    instance whose fetch dead-lettered it; one found during a fetch that was abandoned
    rides on the next.

    A list, so that callers that only want the deliveries use it as one.
    """

    __slots__ = ("lost",)

    def __init__(self, deliveries: Iterable[Delivery] = (), lost: Iterable[DeadLetter] = ()):
        super().__init__(deliveries)
        self.lost: list[DeadLetter] = list(lost)


class Delivery(abc.ABC):
    """One received message, leased to the receiver until settled."""

    __slots__ = (
        "body",
        "delivery_count",
        "id",
        "priority",
        "queue",
        "records_linked",
        "running_recorded",
    )

    def __init__(
        self, id: str, queue: str, body: bytes, priority: int, delivery_count: int
    ) -> None:
        self.id = id
        self.queue = queue
        self.body = body
        self.priority = priority
        self.delivery_count = delivery_count
        self.running_recorded = False
        """The broker marked the task's record running as it leased this delivery (see
        :meth:`Broker.fetch_starting`); handed back unstarted, it marks it queued again."""
        self.records_linked = False
        """:meth:`ack_recording`, :meth:`dead_letter_recording`, :meth:`retry_recording`
        and :meth:`write_record` write the task's record in the result store the broker
        was linked to (:meth:`Broker.link_records`)."""

    @property
    @abc.abstractmethod
    def lease(self) -> float | None:
        """Seconds a lease lasts (None: no leases); renew with :meth:`touch` before then."""

    @abc.abstractmethod
    async def ack(self) -> bool:
        """Done: remove the message. False if the lease was lost."""

    async def ack_recording(
        self, task_id: str, changes: Mapping[str, Any], ttl: float | None
    ) -> tuple[bool, bool]:
        """Write ``changes`` to the record of ``task_id`` in the linked result store, as
        ``ResultStore.update`` does, then :meth:`ack`, in one step (only where
        :attr:`records_linked`): a worker that dies in between cannot leave an outcome
        written and its message to be delivered again. Returns whether the record was
        written (False: it was terminal, left as it was) and whether the ack held; the
        record is written whether the ack holds or not."""
        raise NotImplementedError(f"{type(self).__name__} writes no records")

    async def dead_letter_recording(
        self,
        task_id: str,
        changes: Mapping[str, Any],
        ttl: float | None,
        reason: str,
        error: str | None = None,
    ) -> tuple[bool, bool]:
        """:meth:`ack_recording` with :meth:`dead_letter` in place of the ack: a failure
        and its dead letter in one step. Returns whether the record was written and
        whether the dead-lettering held; the message is dead-lettered whether the record
        was written or not."""
        raise NotImplementedError(f"{type(self).__name__} writes no records")

    async def retry_recording(
        self,
        task_id: str,
        changes: Mapping[str, Any],
        body: bytes,
        delay: float,
        *,
        max_deliveries: int = 1,
    ) -> tuple[bool, bool]:
        """:meth:`ack_recording` with :meth:`retry` in place of the ack, and the retry
        made only if the record was written: a record that became terminal while the
        task ran (cancelled) keeps its next attempt from being published. Returns whether
        the record was written and whether the retry was made (False also when the lease
        was lost)."""
        raise NotImplementedError(f"{type(self).__name__} writes no records")

    async def write_record(
        self, task_id: str, changes: Mapping[str, Any], ttl: float | None
    ) -> bool:
        """Write ``changes`` to the record of ``task_id`` in the linked result store, as
        ``ResultStore.update`` does, in the same call as the settles made with it (only
        where :attr:`records_linked`): a worker's next task marked running goes with the
        previous one's outcome and ack. Returns whether it was written (False: the record
        was terminal, left as it was)."""
        raise NotImplementedError(f"{type(self).__name__} writes no records")

    @abc.abstractmethod
    async def nack(self, *, requeue: bool = True) -> bool:
        """Hand back an unstarted message (no delivery is counted) or drop it."""

    @abc.abstractmethod
    async def retry(self, body: bytes, delay: float, *, max_deliveries: int = 1) -> bool:
        """Atomically replace this message with ``body``, delivered after ``delay`` s.

        The replacement starts a fresh delivery count bounded by ``max_deliveries``.
        """

    @abc.abstractmethod
    async def touch(self) -> bool:
        """Renew the lease. False if it was already lost."""

    @abc.abstractmethod
    async def dead_letter(self, reason: str, error: str | None = None) -> bool:
        """Move the message to its queue's dead-letter list."""


class Broker(abc.ABC):
    """Transport for task messages. Construct cheaply; connect lazily in :meth:`connect`."""

    capabilities: ClassVar[Capabilities] = Capabilities()
    url: str = ""

    def __repr__(self) -> str:
        # The URL may carry a password or a token: show it masked.
        return f"<{type(self).__name__} {mask_url(self.url)}>"

    @abc.abstractmethod
    async def connect(self) -> None:
        """Open connections; raise :class:`~taskflow.errors.BrokerError` within a bound."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release every connection and background task. Idempotent."""

    async def declare(self, queue: str, *, max_length: int | None = None) -> None:  # noqa: B027
        """Make sure ``queue`` exists; ``max_length`` bounds it (None: unbounded)."""

    @abc.abstractmethod
    async def publish(self, messages: Sequence[Message]) -> None:
        """Publish all of ``messages`` or none (raising QueueFull / BrokerError)."""

    def publish_blocking(self, messages: Sequence[Message]) -> None:
        """Thread-safe synchronous publish (only if ``capabilities.blocking_publish``)."""
        raise NotImplementedError

    async def publish_recording(
        self, messages: Sequence[Message], records: Sequence[tuple[str, Mapping[str, Any]]]
    ) -> None:
        """:meth:`publish`, creating with the messages, in one step, the ``records``
        (task id, fields) in the result store the broker was linked to
        (:meth:`link_records`), as ``ResultStore.create_many`` does without a time to
        live: a record that exists is left as it is. All or nothing with the messages
        (QueueFull: neither). Only where :meth:`link_records` returned True."""
        raise NotImplementedError(f"{type(self).__name__} writes no records")

    def publish_recording_blocking(
        self, messages: Sequence[Message], records: Sequence[tuple[str, Mapping[str, Any]]]
    ) -> None:
        """Thread-safe synchronous :meth:`publish_recording` (only where
        ``capabilities.blocking_publish`` and :meth:`link_records` returned True)."""
        raise NotImplementedError(f"{type(self).__name__} writes no records")

    @abc.abstractmethod
    async def fetch(self, queues: Sequence[str], max_messages: int, timeout: float) -> FetchResult:
        """Receive up to ``max_messages``, taking queues in the given order; the result
        also carries what this instance dead-lettered on its own (``FetchResult.lost``)."""

    async def fetch_starting(
        self, queues: Sequence[str], max_messages: int, timeout: float, start: int
    ) -> FetchResult:
        """:meth:`fetch`, from a worker that will start every message it takes at once
        if it takes at most ``start``. A broker that writes the task records of the
        result store it was linked to (:meth:`link_records`) then marks them running as
        it leases the messages, saving the worker that round trip before each body; it
        sets ``Delivery.running_recorded`` on those. By default, a plain fetch."""
        return await self.fetch(queues, max_messages, timeout)

    def link_records(self, records: object | None) -> bool:
        """Whether this broker can write the task records described by ``records``
        (``ResultStore.record_location()``) with its own steps: create the queued ones
        with their messages (:meth:`publish_recording`), mark them running as it leases
        the messages (:meth:`fetch_starting`), write outcomes with the settles
        (``Delivery.ack_recording`` and the rest). False by default."""
        return False

    async def cancel(self, message_id: str, queue: str) -> bool:
        """Remove a queued or scheduled message if the broker can; True if removed."""
        return False

    async def send_control(self, command: dict[str, Any]) -> None:  # noqa: B027
        """Broadcast a control command (e.g. cancel a running task) to all workers."""

    async def control_messages(self, timeout: float) -> list[dict[str, Any]]:
        """Control commands received since the calling task's previous call, waiting up
        to ``timeout``."""
        return []

    def forget_control_reader(self) -> None:  # noqa: B027
        """Drop the calling task's read position (its reader is done)."""

    def max_hold(self) -> float | None:
        """The longest the server lets a delivery stay unacknowledged, in seconds (None:
        no bound, the worker renews leases). A worker refuses to start with a task that
        may run longer."""
        return None

    def limiter(self) -> ClusterLimiter | None:
        """The limiter that shares ``cluster_rate_limit`` and ``cluster_concurrency``
        between every worker on this broker (None: this broker cannot share a limit)."""
        return None


ALARM_SHARE: Final = 0.9
"""The share of a server's limit (Redis's ``maxmemory``, a NATS account's JetStream
storage) in use from which :meth:`BrokerAdmin.alarms` reports it."""


class BrokerAdmin(abc.ABC):
    """Operator actions, separate from the hot path.

    The listing and lookup methods after :meth:`requeue` (all but :meth:`depths` and
    :meth:`purge_batch`) have defaults that raise :class:`~taskflow.errors.Unsupported`
    naming :attr:`admin_backend`: a backend that cannot answer says so, never answers
    empty.
    """

    admin_backend: ClassVar[str] = "this"
    """The backend's name in error messages (``redis``, ``nats``, ...)."""

    def unsupported(self, what: str) -> Unsupported:
        """The error for a question this backend cannot answer: ``the X broker cannot ...``."""
        return Unsupported(f"the {self.admin_backend} broker cannot {what}")

    @abc.abstractmethod
    async def depth(self, queue: str) -> dict[str, int]:
        """Counts: ``ready``, ``scheduled``, ``inflight``, ``dead``."""

    @abc.abstractmethod
    async def peek(self, queue: str, limit: int = 10) -> list[bytes]:
        """Bodies of the next ``limit`` ready messages, in delivery order, not removed."""

    async def purge(self, queue: str) -> int:
        """Drop every ready and scheduled message of ``queue``; returns how many."""
        return len(await self.purge_ids(queue))

    @abc.abstractmethod
    async def purge_ids(self, queue: str, *, scheduled: bool = True) -> list[str]:
        """Drop every ready message of ``queue`` (and scheduled ones with ``scheduled``);
        returns their ids, so their records can be closed. Leased messages stay."""

    @abc.abstractmethod
    async def pause(self, queue: str) -> None:
        """Stop delivering from ``queue`` (publishing still works)."""

    @abc.abstractmethod
    async def resume(self, queue: str) -> None:
        """Deliver from ``queue`` again."""

    @abc.abstractmethod
    async def dead_letters(self, queue: str, limit: int = 100) -> list[DeadLetter]:
        """The dead-letter list of ``queue``, oldest first."""

    @abc.abstractmethod
    async def replay(self, queue: str, ids: Sequence[str] | None = None) -> int:
        """Publish dead letters again (all, or those with ``ids``); returns how many."""

    @abc.abstractmethod
    async def requeue(self, queue: str, messages: Sequence[Message]) -> list[str]:
        """Move dead letters back to ``queue`` as ``messages`` (matched by id): new body,
        priority and ``max_deliveries``, a fresh delivery count, due now.

        Each move is atomic and happens once: a message whose id is not (or no longer) a
        dead letter of ``queue`` is skipped, so concurrent replays never make a second
        live copy of one id. Returns the ids moved.

        A broker that moves the messages one at a time and fails after the first raises
        :class:`StoppedPartWay` naming those it sent (their tasks are live again: the
        caller must not take their restart back); a message whose send got no answer
        keeps its dead letter. ``purge_ids``, ``purge_batch`` and ``discard_dead`` raise
        it the same way, naming what they removed.
        """

    async def purge_batch(self, queue: str, *, scheduled: bool, limit: int) -> list[str]:
        """Drop up to ``limit`` ready (and scheduled) messages; their ids. Called until it
        returns fewer than ``limit``; a backend without batches drops them all at once."""
        return await self.purge_ids(queue, scheduled=scheduled)

    async def purge_batch_closing(
        self, queue: str, *, scheduled: bool, limit: int, closing: RecordClose
    ) -> list[str]:
        """:meth:`purge_batch`, with the task records of the ids it drops closed as
        ``closing`` says; what an operator's purge calls.

        A broker that writes its result store's records in its own steps
        (``Broker.link_records``) writes ``closing.changes`` in the step that drops the
        messages: a purge whose answer is lost then leaves no record waiting for a message
        that is gone. A broker that takes messages before it drops them calls
        ``closing.close(ids)`` before it drops any of a group: a ``close`` that fails leaves
        that group waiting, and a drop that fails after it leaves messages whose records
        say they finished, which workers settle without running. By default the messages
        are dropped first and ``close`` gets those dropped (a :class:`StoppedPartWay`'s
        ``done`` included); a ``close`` that fails then raises :class:`StoppedPartWay`
        naming them all, their records left as they were.
        """
        stopped: StoppedPartWay | None = None
        try:
            ids = await self.purge_batch(queue, scheduled=scheduled, limit=limit)
        except StoppedPartWay as exc:
            ids, stopped = list(exc.done), exc
        try:
            await closing.close(ids)
        except BrokerError as exc:
            # Dropped all the same (their records still say queued): counted as done.
            raise StoppedPartWay(str(exc), ids) from exc
        if stopped is not None:
            raise stopped
        return ids

    async def known_queues(self) -> list[str]:
        """Every queue this broker knows (declared, or holding messages), sorted."""
        raise self.unsupported("list its queues")

    async def has_queue(self, queue: str) -> bool:
        """Whether this broker knows ``queue``; for a backend that cannot list its queues
        (RabbitMQ), asked of that one queue."""
        return queue in await self.known_queues()

    async def paused_of(self, queues: Sequence[str]) -> set[str]:
        """Which of ``queues`` are paused now."""
        return set(queues) & await self.paused_queues()

    async def alarms(self) -> list[str]:
        """What the server says now that stops or endangers delivery (a full server, a
        resource alarm, a policy that deletes keys), one sentence each, naming the masked
        URL; empty when all is well or the backend cannot tell. A limit is reported from
        :data:`ALARM_SHARE` of it in use, before the server refuses anything."""
        return []

    async def paused_queues(self) -> set[str]:
        """The queues paused now."""
        raise self.unsupported("list paused queues")

    async def depths(self, queues: Sequence[str]) -> list[dict[str, int]]:
        """:meth:`depth` of each of ``queues``, in order (a backend may batch them)."""
        return [await self.depth(q) for q in queues]

    async def browse(self, queue: str, state: str, offset: int, limit: int) -> list[Waiting]:
        """Up to ``limit`` messages of ``queue`` in ``state`` (``ready`` in delivery order,
        ``scheduled`` by due time, ``running``), skipping the first ``offset``."""
        raise self.unsupported(f"list {state} tasks")

    dead_positions_shift: ClassVar[bool] = False
    """True where a dead letter's position is its index in the list (removing an earlier
    one moves it down); False where it is a stable sequence number."""

    async def dead_page(
        self, queue: str, position: int, limit: int
    ) -> tuple[list[tuple[int, DeadLetter]], int | None]:
        """Up to ``limit`` dead letters of ``queue`` from ``position`` (0: the oldest),
        oldest first, each with its own position, and the position of the next page
        (``None``: no more)."""
        raise self.unsupported("page through dead letters")

    async def dead_by_ids(self, queue: str, ids: Sequence[str]) -> list[DeadLetter]:
        """The dead letters of ``queue`` with ``ids`` (missing ones left out)."""
        raise self.unsupported("look dead letters up by id")

    async def discard_dead(self, queue: str, ids: Sequence[str]) -> list[str]:
        """Delete these dead letters of ``queue`` for good; the ids removed."""
        raise self.unsupported("discard dead letters")

    async def add_dead(self, letters: Sequence[DeadLetter]) -> None:
        """File ``letters`` as dead letters of their queues (a snapshot import)."""
        raise self.unsupported("import dead letters")

    async def present(self, queue: str, ids: Sequence[str]) -> set[str]:
        """Which of ``ids`` have a message of ``queue`` (waiting, running or dead)."""
        raise self.unsupported("look messages up by id")


class DelegatedAdmin(BrokerAdmin):
    """A :class:`BrokerAdmin` whose operator actions live in a separate ``_admin`` object,
    kept out of the broker class so its hot path stays small; every action forwards."""

    _admin: BrokerAdmin

    async def depth(self, queue: str) -> dict[str, int]:
        return await self._admin.depth(queue)

    async def peek(self, queue: str, limit: int = 10) -> list[bytes]:
        return await self._admin.peek(queue, limit)

    async def purge_ids(self, queue: str, *, scheduled: bool = True) -> list[str]:
        return await self._admin.purge_ids(queue, scheduled=scheduled)

    async def pause(self, queue: str) -> None:
        await self._admin.pause(queue)

    async def resume(self, queue: str) -> None:
        await self._admin.resume(queue)

    async def dead_letters(self, queue: str, limit: int = 100) -> list[DeadLetter]:
        return await self._admin.dead_letters(queue, limit)

    async def replay(self, queue: str, ids: Sequence[str] | None = None) -> int:
        return await self._admin.replay(queue, ids)

    async def requeue(self, queue: str, messages: Sequence[Message]) -> list[str]:
        return await self._admin.requeue(queue, messages)

    async def purge_batch(self, queue: str, *, scheduled: bool, limit: int) -> list[str]:
        return await self._admin.purge_batch(queue, scheduled=scheduled, limit=limit)

    async def purge_batch_closing(
        self, queue: str, *, scheduled: bool, limit: int, closing: RecordClose
    ) -> list[str]:
        return await self._admin.purge_batch_closing(
            queue, scheduled=scheduled, limit=limit, closing=closing
        )

    async def known_queues(self) -> list[str]:
        return await self._admin.known_queues()

    async def has_queue(self, queue: str) -> bool:
        return await self._admin.has_queue(queue)

    async def paused_of(self, queues: Sequence[str]) -> set[str]:
        return await self._admin.paused_of(queues)

    async def alarms(self) -> list[str]:
        return await self._admin.alarms()

    async def paused_queues(self) -> set[str]:
        return await self._admin.paused_queues()

    async def depths(self, queues: Sequence[str]) -> list[dict[str, int]]:
        return await self._admin.depths(queues)

    async def browse(self, queue: str, state: str, offset: int, limit: int) -> list[Waiting]:
        return await self._admin.browse(queue, state, offset, limit)

    @property
    def dead_positions_shift(self) -> bool:  # type: ignore[override]
        return self._admin.dead_positions_shift

    async def dead_page(
        self, queue: str, position: int, limit: int
    ) -> tuple[list[tuple[int, DeadLetter]], int | None]:
        return await self._admin.dead_page(queue, position, limit)

    async def dead_by_ids(self, queue: str, ids: Sequence[str]) -> list[DeadLetter]:
        return await self._admin.dead_by_ids(queue, ids)

    async def discard_dead(self, queue: str, ids: Sequence[str]) -> list[str]:
        return await self._admin.discard_dead(queue, ids)

    async def add_dead(self, letters: Sequence[DeadLetter]) -> None:
        await self._admin.add_dead(letters)

    async def present(self, queue: str, ids: Sequence[str]) -> set[str]:
        return await self._admin.present(queue, ids)
