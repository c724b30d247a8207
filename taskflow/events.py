"""``App.events()``: finish events of every worker of the app.

With the memory backend the app's workers share an in-process bus. With a result store
that publishes (Redis, NATS) a pump on the app's loop reads the store's event stream and
feeds the subscription, so events from every process arrive, with results decoded by the
registered task's return annotation when the task is known here.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
from typing import Any

from .eventbus import Subscription, event_from_dict
from .kernel import Kernel
from .payload import decode_any

__all__ = ["open_events"]

log = logging.getLogger("taskflow.events")

_SUBSCRIBE_WAIT = 2.0  # seconds to wait for the store's subscription to be in place


def open_events(kernel: Kernel, buffer: int, drop: str) -> Subscription:
    """A subscription to the app's finish events (see :meth:`App.events`)."""
    bus = kernel.events
    if not kernel.results.capabilities.events:
        return bus.subscribe(buffer, drop)
    ready = threading.Event()
    holder: dict[str, Any] = {}

    def stop() -> None:
        future = holder.get("future")
        if future is not None:
            future.cancel()

    sub = bus.subscribe(buffer, drop, on_close=stop)
    holder["future"] = kernel.loop.submit(_pump(kernel, sub, ready))
    ready.wait(_SUBSCRIBE_WAIT + 1.0)
    return sub


async def _pump(kernel: Kernel, sub: Subscription, ready: threading.Event) -> None:
    try:
        await kernel.connect()
        stream = kernel.results.subscribe_events()
        first = asyncio.ensure_future(stream.__anext__())
        await _until_subscribed(kernel, first)
        ready.set()
        while True:
            data = await first
            sub.offer(_decode(kernel, data))
            first = asyncio.ensure_future(stream.__anext__())
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # the subscription ends; its reader sees it closed
        log.warning("event stream of app %s ended: %s", kernel.settings.name, exc)
        sub.close()
    finally:
        ready.set()


async def _until_subscribed(kernel: Kernel, first: asyncio.Future[Any]) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + _SUBSCRIBE_WAIT
    while loop.time() < deadline and not first.done():
        if await kernel.results.event_listeners() > 0:
            return
        await asyncio.sleep(0.01)


def _decode(kernel: Kernel, data: dict[str, Any]) -> Any:
    event = event_from_dict(data)
    task = kernel.registry.get(event.task_name)
    try:
        value = task.schema.decode_result(event.result) if task else decode_any(event.result)
    except Exception:  # an undecodable result still makes an event
        value = event.result
    return dataclasses.replace(event, result=value)
