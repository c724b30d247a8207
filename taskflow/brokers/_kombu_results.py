"""The result store of an ``amqp://`` app given no ``results=``: RabbitMQ keeps no results.

Records live in the process's memory, so that fire-and-forget tasks, hooks and events
work; anything that waits for a result raises :class:`~taskflow.errors.ConfigError`
naming the fix, since no other process could ever write the result it waits for.
"""

from __future__ import annotations

from typing import Any

from ..clock import Clock
from ..errors import ConfigError
from ..results.memory import MemoryResultStore
from ..urls import mask_url

__all__ = ["NoAmqpResults"]


class NoAmqpResults(MemoryResultStore):
    """In-process records; waiting for a result is a :class:`ConfigError`."""

    def __init__(self, url: str = "amqp://", *, clock: Clock | None = None) -> None:
        super().__init__(clock=clock)
        self.url = url

    @classmethod
    def from_url(cls, url: str, *, clock: Clock | None = None) -> NoAmqpResults:
        """Built for an ``amqp://`` broker URL (its query options are the broker's)."""
        return cls(url, clock=clock)

    def _refuse(self) -> ConfigError:
        return ConfigError(
            f"the broker {mask_url(self.url)!r} (RabbitMQ) keeps no task results: give the "
            'app a result store, e.g. App(..., results="redis://localhost:6379/0") '
            "(or a nats:// or sqlite:/// URL); fire-and-forget tasks work without one"
        )

    async def wait(self, task_id: str, timeout: float | None) -> dict[str, Any] | None:
        """Refused: no other process can write the result."""
        raise self._refuse()

    def wait_blocking(self, task_id: str, timeout: float | None) -> dict[str, Any] | None:
        """Refused: no other process can write the result."""
        raise self._refuse()
