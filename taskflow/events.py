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
from typing import TYPE_CHECKING, Any

from .eventbus import EventBus, Subscription, event_from_dict
from .payload import decode_any

if TYPE_CHECKING:
    from .app import App

__all__ = ["open_events"]

log = logging.getLogger("taskflow.events")

_SUBSCRIBE_WAIT = 2.0  # seconds to wait for the store's subscription to be in place


def open_events(app: App, bus: EventBus, buffer: int, drop: str) -> Subscription:
    """A subscription to the app's finish events (see :meth:`App.events`)."""
    if not app.results.capabilities.events:
        return bus.subscribe(buffer, drop)
    ready = threading.Event()
    holder: dict[str, Any] = {}

    def stop() -> None:
        future = holder.get("future")
        if future is not None:
            future.cancel()

    sub = bus.subscribe(buffer, drop, on_close=stop)
    holder["future"] = app._runtime.submit(_pump(app, sub, ready))
    ready.wait(_SUBSCRIBE_WAIT + 1.0)
    return sub


async def _pump(app: App, sub: Subscription, ready: threading.Event) -> None:
    try:
        await app._connect()
        stream = app.results.subscribe_events()
        first = asyncio.ensure_future(stream.__anext__())
        await _until_subscribed(app, first)
        ready.set()
        while True:
            data = await first
            sub._offer(_decode(app, data))
            first = asyncio.ensure_future(stream.__anext__())
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # the subscription ends; its reader sees it closed
        log.warning("event stream of app %s ended: %s", app.name, exc)
        sub.close()
    finally:
        ready.set()


async def _until_subscribed(app: App, first: asyncio.Future[Any]) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + _SUBSCRIBE_WAIT
    while loop.time() < deadline and not first.done():
        if await app.results.event_listeners() > 0:
            return
        await asyncio.sleep(0.01)


def _decode(app: App, data: dict[str, Any]) -> Any:
    event = event_from_dict(data)
    task = app.registry.get(event.task_name)
    try:
        value = task.schema.decode_result(event.result) if task else decode_any(event.result)
    except Exception:  # an undecodable result still makes an event
        value = event.result
    return dataclasses.replace(event, result=value)
