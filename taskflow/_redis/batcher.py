"""Micro-batching: concurrent calls of one event loop go to Redis together.

A worker's slots finish at nearly the same time; their settles (broker) and record updates
(result store) would each be a script call of its own, and sending them one round trip
apiece would make the round trip the limit. The first call schedules a flush for the next
turn of the loop; every call made until then joins the batch, which both scripts take in
one call.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic, TypeVar

__all__ = ["Batcher"]

ItemT = TypeVar("ItemT")
ResultT = TypeVar("ResultT")

BATCH = 500
"""Most items sent in one call: bounds a script's run time, during which Redis serves
nobody else."""


def _consume(task: asyncio.Task[Any]) -> None:
    # Errors reach the callers through their futures; this only marks them retrieved.
    if not task.cancelled():
        task.exception()


class Batcher(Generic[ItemT, ResultT]):
    """Sends the items submitted while a batch forms with one call of ``send``.

    ``send`` takes up to :data:`BATCH` items and returns one result per item, in order. If
    it raises, every caller of that batch gets the same exception; the next batch is sent
    all the same.
    """

    def __init__(self, send: Callable[[list[ItemT]], Awaitable[Sequence[ResultT]]]) -> None:
        """A batcher over ``send``; the loop of the first submit runs its flushes."""
        self._send = send
        self._pending: list[tuple[ItemT, asyncio.Future[ResultT]]] = []
        self._flushing = False

    async def submit(self, item: ItemT) -> ResultT:
        """Queue ``item`` for the next batch and wait for its result."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[ResultT] = loop.create_future()
        self._pending.append((item, fut))
        if not self._flushing:
            self._flushing = True
            # Its first step runs on the next turn of the loop: every call made until
            # then joins the batch.
            loop.create_task(self._flush()).add_done_callback(_consume)
        return await fut

    async def _flush(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending[:BATCH], self._pending[BATCH:]
                try:
                    results = await self._send([item for item, _ in batch])
                except BaseException as exc:
                    for _, fut in batch:
                        if not fut.done():
                            fut.set_exception(exc)
                    continue
                for (_, fut), result in zip(batch, results, strict=True):
                    if not fut.done():
                        fut.set_result(result)
        finally:
            self._flushing = False
