"""How an idle fetch of the Redis broker waits: blocked on wake-up lists, never polling.

A fetch that found nothing blocks (BLPOP, on a small pool of its own) on the notify lists
of its queues, which a publish pushes to. Two more things end the wait, both through a key
of the fetch's own that is pushed from here:

* a message that falls due or a lease that runs out: Redis checks blocking timeouts on its
  own timer (every 100 ms at the default ``hz``), too coarse for a message due in 200 ms,
  so a *precise* wait has a local timer push its key when the time comes;
* the broker's clock jumping (a test clock moved by hand: Redis cannot know), heard
  through :meth:`~taskflow.clock.Clock.subscribe`.

On the real clock the fetch that follows a wake-up is sent with the wait, in one pipeline
(:class:`FetchAfter`): Redis runs it as soon as the wait ends, so a message pushed to an
idle worker costs one round trip to take instead of two. A wait that is cancelled (the
worker stops) first wakes itself, reads what that fetch took and hands it back uncounted:
the fetch may already have leased a message. A caller that knows its queues were left
empty a moment ago (:class:`Drained`) starts with that wait instead of a fetch of its own: after
a message is picked up, the next fetch does not take a round trip to find nothing.

The pair is sent on a connection of the blocking pool kept for it, packed and read directly
(as :meth:`~taskflow._redis.connection.Connection.run` sends scripts): the client's pipeline
object, its checkout and its reply handling cost more CPU time than the two commands, on
the path of every pickup by an idle worker. A connection error on that path drops the
connection and goes through the client's pipeline instead, with its retries, as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import RedisError, ResponseError

from .._redis.connection import Connection, redis_client
from .._redis.kept import RECONNECT, PoolKept
from .._waiters import within
from ..clock import Clock
from ..errors import BrokerError
from .base import Delivery

__all__ = ["Attempt", "Drained", "FetchAfter", "IdleWait"]

Attempt = Callable[[], Awaitable[tuple[list[Delivery], float | None]]]
"""One try at leasing: the deliveries, and when the next held message falls due (clock
time, None if nothing is held)."""

_BLOCK_CHUNK = 5.0  # longest single BLPOP; the blocking socket's timeout is above it
_RING_SLACK = 0.25  # a precise wait's server-side timeout, past its own timer
_HAND_BACK_WAIT = 2.0  # a cancelled wait: how long to wait for the fetch sent with it
_KEEP = 2  # connections of the blocking pool (of 4) kept for the wait-and-fetch pair


@dataclass(frozen=True)
class FetchAfter:
    """A fetch to send behind a wait, in the same pipeline: the fetch script's SHA1, its
    ARGV (with ``"server"`` for the time: it runs when the wait ends) and the parser of
    its reply."""

    sha: str
    args: Sequence[Any]
    parse: Callable[[Any], tuple[list[Delivery], float | None]]


@dataclass(frozen=True)
class Drained:
    """A fetch of ``queues`` left none of them with a message ready, at ``at`` (monotonic
    seconds); ``next_due``: when the next held message falls due (clock time, None if
    nothing is held)."""

    queues: frozenset[str]
    next_due: float | None
    at: float


class _Alarm:
    """Hears the clock jump while one fetch runs (from any thread) and wakes that fetch."""

    __slots__ = ("key", "loop", "moved", "ring")

    def __init__(self, loop: asyncio.AbstractEventLoop, ring: Callable[[str], None]) -> None:
        self.loop = loop
        self.ring = ring
        self.moved = False  # the clock jumped since the fetch last tried
        self.key: str | None = None  # the wake key of the wait in progress

    def jumped(self) -> None:
        self.moved = True
        key = self.key
        if key is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                self.loop.call_soon_threadsafe(self.ring, key)


class IdleWait:
    """The waits of one broker's fetches, on a pool of their own."""

    def __init__(self, conn: Connection, clock: Clock) -> None:
        """Waits in ``conn``'s namespace, timed by ``clock``; no pool until :meth:`open`."""
        self._conn = conn
        self._clock = clock
        self._blocker: aioredis.Redis | None = None
        self._kept = PoolKept(_KEEP, lambda: self._blocker)
        self._rings: set[asyncio.Task[None]] = set()

    def open(self) -> None:
        """Create the blocking pool (it connects on first use)."""
        timeout = self._conn.connect_timeout
        self._blocker = redis_client(
            self._conn.client_url,
            timeout,
            _BLOCK_CHUNK + timeout,
            max_connections=4,
            options=self._conn.client_options,
        )

    async def close(self) -> None:
        """Close the blocking pool. Idempotent."""
        blocker, self._blocker = self._blocker, None
        self._kept.reset()  # checked out of the pool, which disconnects them as it closes
        if blocker is not None:
            with contextlib.suppress(Exception):
                await blocker.aclose()

    async def fetch(
        self,
        attempt: Attempt,
        notify: list[str],
        timeout: float,
        after: FetchAfter | None = None,
        drained: Drained | None = None,
    ) -> tuple[list[Delivery], float | None]:
        """Call ``attempt`` until it leases something or ``timeout`` seconds passed,
        blocking on the ``notify`` lists in between (``after``: the fetch to send with
        each wait instead of calling ``attempt`` once it ends). What the last fetch made
        took, and when its next held message falls due.

        ``drained``, with ``after``: what a fetch of these queues found a moment ago; the
        first try is then the wait with ``after`` behind it. Whatever became ready since
        pushed a wake-up token (publish, requeue, replay, resume), so the wait ends at
        once for it, and its next due time sets the wait's timer."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0.0, timeout)
        alarm = _Alarm(loop, self._ring)
        # Subscribed before the first try, so that a jump during a try is not missed.
        unsubscribe = self._clock.subscribe(alarm.jumped)
        fetched: tuple[list[Delivery], float | None] | None = None
        if after is not None and drained is not None:
            fetched = ([], drained.next_due)
        looked = False  # whether a fetch was made in this call (it returns none before)
        try:
            while True:
                alarm.moved = False
                if fetched is None:
                    fetched = await attempt()
                    looked = True
                got, next_due = fetched
                fetched = None
                remaining = deadline - loop.time()
                if got or (remaining <= 0 and looked):
                    return got, next_due
                wait = min(remaining, _BLOCK_CHUNK)
                precise = False
                if next_due is not None:
                    # None from a clock that moves only when told: the alarm hears it.
                    due_in = self._clock.real_timeout(next_due - self._clock.time())
                    if due_in is not None:
                        due_in = max(0.0, due_in) + 0.001
                        precise = due_in < wait
                        wait = min(wait, due_in)
                if wait >= 0.001:
                    fetched = await self._block(notify, wait, precise, alarm, after)
                    looked = looked or fetched is not None
        finally:
            unsubscribe()

    async def _block(
        self,
        keys: list[str],
        wait: float,
        precise: bool,
        alarm: _Alarm,
        after: FetchAfter | None,
    ) -> tuple[list[Delivery], float | None] | None:
        """Wait for a wake-up token on the blocking pool (cancellation-safe). With
        ``after``, that fetch rides behind the wait in one pipeline: what it took (None
        without ``after``, or if it could not run: the caller fetches as usual)."""
        blocker = self._blocker
        if blocker is None:
            raise BrokerError(f"redis broker {self._conn.masked} is not connected (call connect())")
        own = self._conn.key("wake", uuid.uuid4().hex)
        timer: asyncio.TimerHandle | None = None
        if precise:
            timer = asyncio.get_running_loop().call_later(wait, self._ring, own)
            wait += _RING_SLACK  # the server's timeout stays as a backstop
        # Set before looking at ``moved``: a jump from now on pushes the key, and a push
        # that lands before the BLPOP starts is still there for it.
        alarm.key = own
        try:
            if alarm.moved:
                return None
            if after is not None:
                return await self._blpop_then_fetch(blocker, [*keys, own], wait, own, after)
            await blocker.blpop([*keys, own], timeout=round(wait, 3))
            return None
        except asyncio.CancelledError:
            if after is None:
                # A cancelled BLPOP would leave a reply in flight: drop that connection.
                await blocker.connection_pool.disconnect(inuse_connections=True)
            raise
        except (RedisError, OSError) as exc:
            raise self._conn.error(exc) from None
        finally:
            alarm.key = None
            if timer is not None:
                timer.cancel()

    async def _blpop_then_fetch(
        self, blocker: aioredis.Redis, keys: list[str], wait: float, own: str, after: FetchAfter
    ) -> tuple[list[Delivery], float | None] | None:
        """``BLPOP`` on ``keys`` with ``after`` behind it, in one pipeline; cancelled, it
        hands back what the fetch took (:meth:`_hand_back`)."""
        sent = asyncio.ensure_future(self._send_pair(blocker, keys, wait, after))
        try:
            reply = await asyncio.shield(sent)
        except asyncio.CancelledError:
            await self._hand_back(own, sent, after)
            raise
        if isinstance(reply, Exception):  # e.g. the server lost its scripts (a restart)
            return None
        return after.parse(reply)

    async def _send_pair(
        self, blocker: aioredis.Redis, keys: list[str], wait: float, after: FetchAfter
    ) -> Any:
        """Send the wait and the fetch together and read both replies: the fetch's reply,
        or the error it answered with. On a kept connection directly when one is free (see
        the module's notes), else through the client's pipeline."""
        conn = self._kept.idle()
        if conn is None:
            conn = await self._kept.take(blocker)
        if conn is None:
            return await self._pipelined(blocker, keys, wait, after)
        try:
            packed = conn.pack_command("BLPOP", *keys, round(wait, 3))
            packed += conn.pack_command("EVALSHA", after.sha, 0, *after.args)
            await conn.send_packed_command(packed)
            replies = [await _reply_or_error(conn), await _reply_or_error(conn)]
        except RECONNECT:
            await self._kept.drop(blocker, conn)
            return await self._pipelined(blocker, keys, wait, after)
        except BaseException:
            # Cancelled with a reply in flight: that connection cannot be used again.
            await self._kept.drop(blocker, conn)
            raise
        if not self._kept.release(blocker, conn):
            await self._kept.drop(blocker, conn)
        return replies[1]

    @staticmethod
    async def _pipelined(
        blocker: aioredis.Redis, keys: list[str], wait: float, after: FetchAfter
    ) -> Any:
        async with blocker.pipeline(transaction=False) as pipe:
            pipe.blpop(keys, timeout=round(wait, 3))
            pipe.evalsha(after.sha, 0, *after.args)
            return (await pipe.execute(raise_on_error=False))[1]

    async def _hand_back(self, own: str, sent: asyncio.Future[Any], after: FetchAfter) -> None:
        """A wait with a fetch behind it was cancelled: end the wait (push its own key),
        read what the fetch took and give it back uncounted. If the server does not
        answer in time, drop the connection: a message leased meanwhile comes back after
        its lease, as with a worker that died."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _HAND_BACK_WAIT
        # Bounded: on a server that stopped answering the client would retry the push
        # (its socket timeout, six times) for a minute.
        with contextlib.suppress(TimeoutError):
            await within(self._push_wake(own), _HAND_BACK_WAIT)
        done, _ = await asyncio.wait({sent}, timeout=max(0.0, deadline - loop.time()))
        if sent not in done:
            sent.cancel()
            blocker = self._blocker
            if blocker is not None:
                await blocker.connection_pool.disconnect(inuse_connections=True)
            return
        if sent.cancelled() or sent.exception() is not None:
            return
        reply = sent.result()
        if isinstance(reply, Exception):
            return
        got, _ = after.parse(reply)
        for delivery in got:
            with contextlib.suppress(Exception):
                await within(delivery.nack(requeue=True), _HAND_BACK_WAIT)

    def _ring(self, key: str) -> None:
        task = asyncio.get_running_loop().create_task(self._push_wake(key))
        self._rings.add(task)
        task.add_done_callback(self._rings.discard)

    async def _push_wake(self, key: str) -> None:
        if not self._conn.connected:
            return
        client = self._conn.client()
        # A token the waiter no longer needs (it woke for another reason) expires.
        with contextlib.suppress(RedisError, OSError):
            async with client.pipeline(transaction=False) as pipe:
                pipe.rpush(key, "1")
                pipe.pexpire(key, 5000)
                await pipe.execute()


async def _reply_or_error(conn: AbstractConnection) -> Any:
    """The next reply on ``conn``, or the error the server answered with (the connection
    stays usable: the reply was read)."""
    try:
        return await conn.read_response()
    except ResponseError as exc:
        return exc
