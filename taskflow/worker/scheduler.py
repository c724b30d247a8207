"""The worker's local scheduler: priority heaps per queue, weighted fair share across
queues (smooth weighted round robin), and the rate-limit gate."""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ..brokers.base import Delivery
from ..clock import Clock
from ..kernel import TaskDef
from ..message import Envelope
from .ratelimit import TokenBucket

if TYPE_CHECKING:
    from .bodies import BodyRun

__all__ = ["Job", "Scheduler"]


class Job:
    """One received task on its way through the worker."""

    __slots__ = (
        "adopted",
        "attempt",
        "body",
        "cancel_reason",
        "ctx",
        "delivery",
        "envelope",
        "given_up",
        "handle",
        "in_user_code",
        "permit",
        "rated",
        "settled",
        "settling",
        "stores",
        "task",
        "token",
    )

    def __init__(self, envelope: Envelope, delivery: Delivery, task: TaskDef) -> None:
        self.envelope = envelope
        self.delivery = delivery
        self.task = task
        self.stores = task.options.store_result
        """Whether the task's outcome is written to the result store."""
        # A delivery lost with its worker is delivered again as the same attempt: it does
        # not spend a retry (the broker bounds it by the message's max_deliveries).
        self.attempt = envelope.attempt
        self.cancel_reason: str | None = None
        self.ctx: Any = None
        self.handle: Any = None  # the asyncio task while running
        self.in_user_code = False  # True only while the task's own code runs
        self.settling = False  # its code returned; its outcome is being written
        self.settled = False  # its message was settled: only its hooks and events remain
        # Given up here: its attempt ends on the broker's next delivery (its lease ran out
        # before its body started, or the child process running it died).
        self.given_up = False
        # The run of a sync body in its thread, and whether the worker stopped while that
        # body still ran (it is handed back only once the body returns).
        self.body: BodyRun | None = None
        self.adopted = False
        # Limits already passed, kept while the job waits for the next one: the local
        # token bucket's token, the cluster-wide token, the cluster-wide permit (its holder).
        self.rated = False
        self.token = False
        self.permit: str | None = None

    def set_body(self, body: BodyRun) -> None:
        """Note the run of this job's sync body in its thread."""
        self.body = body


class Scheduler:
    """Chooses the next job: fair across queues by weight, strict priority then FIFO
    within a queue, holding back jobs whose task is over its rate limit."""

    def __init__(
        self, queues: Sequence[str], weights: Mapping[str, int], clock: Clock, concurrency: int
    ) -> None:
        self.queues = list(queues)
        self._heaps: dict[str, list[tuple[float, int, Job]]] = {q: [] for q in self.queues}
        self._weights = {q: max(1, int(weights.get(q, 1))) for q in self.queues}
        self._credit = dict.fromkeys(self.queues, 0)
        # Fetch order rotates on its own counters, so that asking the broker does not
        # skew which local job runs next.
        self._fetch_credit = dict.fromkeys(self.queues, 0)
        self._seq = itertools.count()
        self._clock = clock
        self._concurrency = concurrency
        self._buckets: dict[str, TokenBucket | None] = {}
        self._throttled: list[tuple[float, int, Job]] = []
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def push(self, job: Job) -> None:
        """Add a received job."""
        heap = self._heaps.get(job.envelope.queue)
        if heap is None:  # a queue we were not asked for (e.g. a broker that routes widely)
            heap = self._heaps[job.envelope.queue] = []
            self.queues.append(job.envelope.queue)
            self._weights[job.envelope.queue] = 1
            self._credit[job.envelope.queue] = 0
            self._fetch_credit[job.envelope.queue] = 0
        heapq.heappush(heap, (-job.envelope.priority, next(self._seq), job))
        self._size += 1

    def _pick(self, candidates: Sequence[str], credit: dict[str, int] | None = None) -> str | None:
        # Smooth weighted round robin: the same interleaving nginx uses, deterministic.
        if not candidates:
            return None
        if len(candidates) == 1:
            return candidates[0]
        credit = self._credit if credit is None else credit
        total = 0
        best: str | None = None
        for q in candidates:
            credit[q] += self._weights[q]
            total += self._weights[q]
            if best is None or credit[q] > credit[best]:
                best = q
        assert best is not None
        credit[best] -= total
        return best

    def pop(self) -> Job | None:
        """The next job allowed to run now, or None."""
        if self._throttled:
            self._release()
        queues, heaps = self.queues, self._heaps
        while True:
            if len(queues) == 1:  # most workers: no round robin to keep
                heap = heaps[queues[0]]
                if not heap:
                    return None
            else:
                queue = self._pick([q for q in queues if heaps[q]])
                if queue is None:
                    return None
                heap = heaps[queue]
            _, _, job = heapq.heappop(heap)
            wait = self._gate(job)
            if wait > 0:
                heapq.heappush(
                    self._throttled, (self._clock.monotonic() + wait, next(self._seq), job)
                )
                continue
            self._size -= 1
            return job

    def _gate(self, job: Job) -> float:
        if job.rated:  # took its token before it was deferred by a cluster-wide limit
            return 0.0
        name = job.task.name
        if name not in self._buckets:
            limit = job.task.options.rate_limit
            bucket = None
            if limit is not None:
                burst = limit.burst or max(1, min(self._concurrency, int(limit.count)))
                bucket = TokenBucket(limit.rate, burst, self._clock)
            self._buckets[name] = bucket
        bucket = self._buckets[name]
        wait = 0.0 if bucket is None else bucket.acquire()
        job.rated = wait <= 0
        return wait

    def defer(self, job: Job, wait: float) -> None:
        """Hold ``job`` back for ``wait`` seconds (a cluster-wide limit refused it now)."""
        heapq.heappush(self._throttled, (self._clock.monotonic() + wait, next(self._seq), job))
        self._size += 1

    def wake(self, task: str) -> None:
        """Let the held-back jobs of ``task`` run now (one of its permits was released)."""
        keep: list[tuple[float, int, Job]] = []
        for entry in self._throttled:
            job = entry[2]
            if job.task.name == task:
                heapq.heappush(
                    self._heaps[job.envelope.queue], (-job.envelope.priority, entry[1], job)
                )
            else:
                keep.append(entry)
        if len(keep) != len(self._throttled):
            heapq.heapify(keep)
            self._throttled = keep

    def _release(self) -> None:
        now = self._clock.monotonic()
        while self._throttled and self._throttled[0][0] <= now:
            _, seq, job = heapq.heappop(self._throttled)
            heapq.heappush(self._heaps[job.envelope.queue], (-job.envelope.priority, seq, job))

    def next_release(self) -> float | None:
        """Seconds until a throttled job may run (None: none is throttled)."""
        if not self._throttled:
            return None
        return max(0.0, self._throttled[0][0] - self._clock.monotonic())

    def ready_count(self) -> int:
        """Jobs not held back by a rate limit."""
        return self._size - len(self._throttled)

    def fetch_order(self) -> list[str]:
        """Queue order for the next fetch: heaviest first, rotated fairly by weight."""
        if len(self.queues) <= 1:
            return list(self.queues)
        first = self._pick(self.queues, self._fetch_credit)
        rest = sorted((q for q in self.queues if q != first), key=lambda q: -self._weights[q])
        return [first, *rest] if first is not None else rest

    def remove(self, task_id: str) -> Job | None:
        """Take a job out by task id (cancellation)."""
        heaps: list[list[tuple[float, int, Job]]] = [*self._heaps.values(), self._throttled]
        for heap in heaps:
            for i, entry in enumerate(heap):
                if entry[2].envelope.id == task_id:
                    heap.pop(i)
                    heapq.heapify(heap)
                    self._size -= 1
                    return entry[2]
        return None

    def drain(self) -> Iterator[Job]:
        """Remove and yield every job (shutdown hands them back)."""
        heaps: list[list[tuple[float, int, Job]]] = [*self._heaps.values(), self._throttled]
        for heap in heaps:
            while heap:
                self._size -= 1
                yield heap.pop()[2]
