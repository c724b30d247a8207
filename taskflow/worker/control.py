"""Beside the fetch loop: cancelling what a worker holds, the control channel (commands
broadcast to every worker of the app), and lease renewal (:mod:`.leases`)."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

from .._waiters import within
from ..kernel import Kernel
from ..message import TaskStatus
from .executor import Executor
from .fetcher import Fetcher
from .leases import LeaseKeeper
from .resilience import Backoff, Outage, cancel_swallowed, describe
from .settle import Settler

__all__ = ["RECHECK", "Control"]

log = logging.getLogger("taskflow.worker")

RECHECK = 5.0
"""Seconds (on the app's clock) between two reads of the records of the tasks a worker
runs, for a cancel whose broadcast it missed: a broadcast reaches only the workers
subscribed at that moment, and a subscription is made as the worker starts and again
after a connection drops. The cancel wrote the record first, so the read finds it."""
_RECHECK_READ = 2.0  # seconds the read may take; a slow store is read again later

Stage = Callable[[], Coroutine[Any, Any, None]]


class Control:
    """Cancellation, the control channel and lease renewal, for one worker."""

    def __init__(
        self,
        kernel: Kernel,
        *,
        name: str,
        fetcher: Fetcher,
        executor: Executor,
        settler: Settler,
        leases: LeaseKeeper,
        rng: random.Random,
        poll_interval: float,
    ) -> None:
        self.kernel = kernel
        self.name = name
        self.fetcher = fetcher
        self.executor = executor
        self.settler = settler
        self.leases = leases
        self.rng = rng
        self.poll_interval = poll_interval

    def stages(self) -> Iterator[tuple[str, Stage]]:
        """The stages that run beside the fetcher, by name, as far as the broker has them."""
        capabilities = self.kernel.broker.capabilities
        if capabilities.control:
            yield "control", self.channel
        if capabilities.leases:
            yield "lease", self.leases.run

    async def cancel(self, task_id: str) -> bool:
        """Stop ``task_id`` if the worker runs or holds it, else remember it; True if found."""
        if self.executor.cancel(task_id):
            return True
        job = self.fetcher.withdraw(task_id)
        if job is not None:
            try:
                await self.settler.cancelled(job)
            finally:
                self.fetcher.window.release(job)
            return True
        self.fetcher.refuse(task_id)
        return False

    async def cancel_all(self) -> int:
        """Cancel everything the worker holds (running and prefetched); how many there were."""
        ids = list(self.fetcher.window.jobs)
        for tid in ids:
            await self.kernel.cancel(tid)
            await self.cancel(tid)
        return len(ids)

    async def channel(self) -> None:
        """Apply broadcast commands (cancel a running task) until cancelled."""
        outage = Outage(f"worker {self.name}: control channel")
        backoff = Backoff(self.rng, first=0.2)
        clock = self.kernel.settings.clock
        recheck_at = clock.monotonic() + RECHECK
        try:
            while True:
                if clock.monotonic() >= recheck_at:
                    recheck_at = clock.monotonic() + RECHECK
                    await self.recheck()
                try:
                    commands = await self.kernel.broker.control_messages(self.poll_interval)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    outage.failed(exc)
                    await asyncio.sleep(backoff.delay())
                    continue
                outage.recovered()
                backoff.reset()
                for command in commands:
                    await self._apply(command)
                if cancel_swallowed():
                    raise asyncio.CancelledError
        finally:
            # Read positions belong to the reading task: drop ours from the reader itself.
            self.kernel.broker.forget_control_reader()

    async def recheck(self) -> int:
        """Stop the running tasks whose records say they were cancelled (a cancel whose
        broadcast this worker missed); how many. A store that does not answer is read
        again at the next check."""
        ids = [tid for tid, job in self.executor.running.items() if job.cancel_reason is None]
        if not ids:
            return 0
        try:
            records = await within(self.kernel.results.get_many(ids), _RECHECK_READ)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.debug(
                "worker %s: reading running tasks' records failed (%s)", self.name, describe(exc)
            )
            return 0
        stopped = 0
        for tid, record in zip(ids, records, strict=True):
            if record is not None and record.get("status") == TaskStatus.CANCELLED.value:
                log.info("worker %s: %s was cancelled; stopping it", self.name, tid)
                stopped += await self.cancel(tid)
        return stopped

    async def _apply(self, command: dict[str, Any]) -> None:
        task_id = command.get("id")
        if command.get("cmd") != "cancel" or not isinstance(task_id, str):
            return
        try:
            await self.cancel(task_id)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # one command must not end the channel
            log.warning("worker %s: could not cancel %s (%s)", self.name, task_id, describe(exc))
