"""The interface of a broker's shared limiter: cluster-wide rate and concurrency limits.

A broker that can share a limit between the workers of an app hands one out from
:meth:`~taskflow.brokers.base.Broker.limiter`. Every backend implements the same two
algorithms, so a limit means the same everywhere:

* **Rate** is GCRA (the generic cell rate algorithm, a token bucket kept as one time
  value): per key a *theoretical arrival time* ``tat``. With emission interval ``T =
  1 / rate`` and tolerance ``tau = (burst - 1) * T``, a token is taken at ``now`` when
  ``max(tat, now) - now <= tau``, which moves ``tat`` to ``max(tat, now) + T``; otherwise
  the answer is how long until it would be.
* **Concurrency** is a set of holders per key, each with an expiry (a lease). Taking a
  permit first drops the expired holders, then adds the new one if fewer than ``limit``
  remain. A holder renews its permit while its task runs and releases it when done; a
  holder that dies stops renewing, and its permit is free again once it expires.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence

__all__ = ["ClusterLimiter", "gcra"]


class ClusterLimiter(abc.ABC):
    """Rate and concurrency limits shared by every worker on one broker.

    ``lease`` is how long a permit lasts without renewal: a permit of a worker that died
    is free again within it. Keys are task names.
    """

    lease: float = 30.0

    @abc.abstractmethod
    async def take_token(self, key: str, rate: float, burst: int) -> float:
        """Take a token of ``key``'s bucket (``rate`` per second, ``burst`` at most saved
        up): 0.0 if taken, else the seconds until one is due (nothing taken)."""

    @abc.abstractmethod
    async def acquire(self, key: str, holder: str, limit: int) -> float:
        """Take a permit of ``key`` for ``holder`` (at most ``limit`` held at once), leased
        for :attr:`lease`: 0.0 if taken (or ``holder`` held one already), else the seconds
        until the earliest permit held now expires (an upper bound on the wait)."""

    @abc.abstractmethod
    async def renew(self, key: str, holders: Sequence[str]) -> list[bool]:
        """Extend the permits of ``holders`` by :attr:`lease`; False for one that had
        expired (or was released) meanwhile."""

    @abc.abstractmethod
    async def release(self, key: str, holder: str) -> None:
        """Give ``holder``'s permit back (nothing happens if it holds none)."""

    async def close(self) -> None:  # noqa: B027
        """Release what the limiter opened itself (the broker's connection stays)."""


def gcra(tat: float | None, now: float, rate: float, burst: int) -> tuple[float, float | None]:
    """One GCRA step: ``(wait, new_tat)``; ``wait`` is 0.0 and ``new_tat`` the value to
    store when a token is taken, else ``new_tat`` is None (store nothing)."""
    interval = 1.0 / rate
    tolerance = (max(1, burst) - 1) * interval
    start = now if tat is None or tat < now else tat
    if start - now > tolerance:
        return start - tolerance - now, None
    return 0.0, start + interval
