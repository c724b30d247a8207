"""Retry delays: exponential backoff, capped, with optional full jitter."""

from __future__ import annotations

import random

__all__ = ["backoff_delay"]


def backoff_delay(
    attempt: int, base: float, cap: float, jitter: bool, rng: random.Random | None = None
) -> float:
    """Delay before retry number ``attempt`` (1 for the first retry).

    ``base * 2**(attempt-1)`` capped at ``cap``; with ``jitter`` a uniform draw from
    ``[0, that]`` ("full jitter"), which spreads a thundering herd of retries.
    """
    exponent = min(max(attempt - 1, 0), 63)
    delay = min(cap, base * (2.0**exponent))
    if jitter:
        delay = (rng or random).uniform(0.0, delay)
    return max(0.0, delay)
