"""The limiter contract, run against every broker's limiter on real time (real servers
keep their own clocks): tokens, permits, renewal, expiry, release."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable
from typing import Any

import pytest

from taskflow.brokers.limits import ClusterLimiter
from tests.contract.conftest import MakeBroker, run

LEASE = 0.6


@pytest.fixture
def limiter(make_broker: MakeBroker) -> ClusterLimiter:
    found = make_broker(lease=LEASE).limiter()
    assert found is not None
    return found


@pytest.fixture
def key() -> str:
    return f"tests.limits.task-{uuid.uuid4().hex[:8]}"


def call(loop: asyncio.AbstractEventLoop, coro: Awaitable[Any]) -> Any:
    return run(loop, coro)


def test_a_limiter_lease_is_the_brokers_lease(limiter: ClusterLimiter) -> None:
    assert limiter.lease == pytest.approx(LEASE)


def test_tokens_come_at_the_rate_with_no_burst(
    loop: asyncio.AbstractEventLoop, limiter: ClusterLimiter, key: str
) -> None:
    assert call(loop, limiter.take_token(key, 2.0, 1)) == 0.0
    wait = call(loop, limiter.take_token(key, 2.0, 1))
    assert 0.3 < wait <= 0.5  # the next token is due half a second after the first
    assert call(loop, limiter.take_token(key, 2.0, 1)) > 0  # a refusal takes nothing


def test_a_burst_allows_that_many_at_once(
    loop: asyncio.AbstractEventLoop, limiter: ClusterLimiter, key: str
) -> None:
    taken = [call(loop, limiter.take_token(key, 1.0, 3)) for _ in range(4)]
    assert taken[:3] == [0.0, 0.0, 0.0]
    assert 0.5 < taken[3] <= 1.0


def test_a_token_is_taken_once_its_wait_is_over(
    loop: asyncio.AbstractEventLoop, limiter: ClusterLimiter, key: str
) -> None:
    assert call(loop, limiter.take_token(key, 5.0, 1)) == 0.0
    wait = call(loop, limiter.take_token(key, 5.0, 1))
    assert wait > 0
    call(loop, asyncio.sleep(wait + 0.02))  # the answer said when: waiting it out is the test
    assert call(loop, limiter.take_token(key, 5.0, 1)) == 0.0


def test_rate_keys_are_independent(
    loop: asyncio.AbstractEventLoop, limiter: ClusterLimiter, key: str
) -> None:
    assert call(loop, limiter.take_token(key, 1.0, 1)) == 0.0
    assert call(loop, limiter.take_token(key + ".other", 1.0, 1)) == 0.0


def test_permits_are_limited_and_released(
    loop: asyncio.AbstractEventLoop, limiter: ClusterLimiter, key: str
) -> None:
    assert call(loop, limiter.acquire(key, "a", 2)) == 0.0
    assert call(loop, limiter.acquire(key, "b", 2)) == 0.0
    wait = call(loop, limiter.acquire(key, "c", 2))
    assert 0 < wait <= LEASE  # until the earliest permit would expire
    assert call(loop, limiter.acquire(key, "a", 2)) == 0.0  # a holder asking again keeps its own
    call(loop, limiter.release(key, "a"))
    assert call(loop, limiter.acquire(key, "c", 2)) == 0.0
    call(loop, limiter.release(key, "nobody"))  # releasing what is not held does nothing
    assert call(loop, limiter.acquire(key, "d", 2)) > 0


def test_an_unrenewed_permit_expires_after_its_lease(
    loop: asyncio.AbstractEventLoop, limiter: ClusterLimiter, key: str
) -> None:
    assert call(loop, limiter.acquire(key, "dead", 1)) == 0.0
    start = time.monotonic()
    while call(loop, limiter.acquire(key, "alive", 1)) > 0:
        assert time.monotonic() - start < LEASE + 2.0, "the permit never expired"
        call(loop, asyncio.sleep(0.05))
    assert time.monotonic() - start >= LEASE * 0.7
    assert call(loop, limiter.renew(key, ["dead", "alive"])) == [False, True]


def test_a_renewed_permit_outlives_its_first_lease(
    loop: asyncio.AbstractEventLoop, limiter: ClusterLimiter, key: str
) -> None:
    assert call(loop, limiter.acquire(key, "runner", 1)) == 0.0
    start = time.monotonic()
    while time.monotonic() - start < LEASE * 2:
        assert call(loop, limiter.renew(key, ["runner"])) == [True]
        assert call(loop, limiter.acquire(key, "other", 1)) > 0
        call(loop, asyncio.sleep(LEASE / 4))
    call(loop, limiter.release(key, "runner"))
    assert call(loop, limiter.renew(key, ["runner"])) == [False]
    assert call(loop, limiter.acquire(key, "other", 1)) == 0.0


def test_concurrent_acquires_never_exceed_the_limit(
    loop: asyncio.AbstractEventLoop, limiter: ClusterLimiter, key: str
) -> None:
    async def race() -> list[float]:
        return list(await asyncio.gather(*(limiter.acquire(key, f"h{i}", 3) for i in range(12))))

    answers = call(loop, race())
    assert sum(1 for a in answers if a == 0.0) == 3
