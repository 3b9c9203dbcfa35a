"""Fair admission to a connection pool: requests go in the order they arrived.

aiohttp's connector is not fair: a connection released while tasks wait for one may be taken
by a request that arrived later, so with more concurrent requests than connections a few of
the first ones can wait for as long as the load lasts. An :class:`Admission` in front of the
pool, with the pool's limit, admits requests strictly first in, first out, so the waiting is
shared by all instead of dumped on a few, and the pool itself never has a queue.

Two lanes: *priority* acquisitions (token-endpoint calls) go ahead of every queued
application request and may use ``reserve`` slots that application requests never take, so
a refresh on a shared session does not queue behind the application it serves.

A slot is handed directly from the releasing request to the first waiter (never put back for
anyone to grab), which is what makes the order strict. A waiter that is cancelled or times
out leaves the queue at once; one cancelled just after it was handed a slot passes the slot
on, so a slot is never leaked and no waiter is skipped.
"""

from __future__ import annotations

import asyncio
import weakref
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp

from ._clock import Clock, SystemClock
from ._errors import ConfigurationError, PoolTimeoutError

__all__ = [
    "Admission",
    "check_limit",
    "check_timeout",
    "gate_for",
    "session_limit",
    "share_with_token_calls",
    "shares_token_calls",
    "token_lane",
]


def check_limit(value: object, name: str = "max_connections") -> int | None:
    """Validate an admission limit: a positive int, or ``None`` (no admission)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigurationError(f"{name} must be a positive integer or None")
    return value


def check_timeout(value: object, name: str = "admission_timeout") -> float | None:
    """Validate an admission timeout: positive seconds, or ``None`` (wait as long as needed)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ConfigurationError(f"{name} must be a positive number of seconds or None")
    if value == float("inf"):
        return None
    return float(value)


class Admission:
    """A FIFO limit of concurrent requests, with a priority lane.

    At most ``limit`` slots are held at once; ordinary acquisitions take at most
    ``limit - reserve`` of them and queue in arrival order; ``priority=True`` acquisitions
    queue ahead of them and may use all ``limit``. ``timeout`` (seconds, on ``clock``) bounds
    the wait of one acquisition and raises :class:`~apimw_async.PoolTimeoutError`.

    Loop-bound like the session it guards: use one per aiohttp session.
    """

    __slots__ = ("__weakref__", "_clock", "_in_use", "_limit", "_priority", "_reserve", "_waiters")

    def __init__(self, limit: int, *, reserve: int = 0, clock: Clock | None = None) -> None:
        if check_limit(limit, "limit") is None:
            raise ConfigurationError("limit must be a positive integer")
        self._limit = limit
        self._reserve = 0
        self._clock = clock
        self._in_use = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._priority: deque[asyncio.Future[None]] = deque()
        self.reserve_lane(reserve)

    @property
    def limit(self) -> int:
        """Slots in all (the pool's connections)."""
        return self._limit

    @property
    def reserve(self) -> int:
        """Slots only priority acquisitions may take."""
        return self._reserve

    @property
    def in_use(self) -> int:
        """Slots held right now."""
        return self._in_use

    @property
    def waiting(self) -> int:
        """Acquisitions queued right now (both lanes)."""
        return len(self._waiters) + len(self._priority)

    def reserve_lane(self, slots: int = 1) -> None:
        """Keep at least ``slots`` slots for priority acquisitions (never fewer than before).

        At most ``limit - 1``: application requests always keep one slot.
        """
        self._reserve = max(self._reserve, min(slots, self._limit - 1))

    async def acquire(self, *, priority: bool = False, timeout: float | None = None) -> None:
        """Wait for a slot in arrival order (see the class docs); pair with :meth:`release`."""
        if priority:
            if not self._priority and self._in_use < self._limit:
                self._in_use += 1
                return
            queue = self._priority
        else:
            if not self._waiters and not self._priority and self._in_use < self._open():
                self._in_use += 1
                return
            queue = self._waiters
        await self._wait(queue, timeout)

    def try_acquire(self) -> bool:
        """Take an ordinary slot if one is free and nobody queues; never waits."""
        if not self._waiters and not self._priority and self._in_use < self._open():
            self._in_use += 1
            return True
        return False

    def release(self) -> None:
        """Give a slot back: to the first waiter, if any."""
        self._in_use -= 1
        self._wake()

    @asynccontextmanager
    async def slot(
        self, *, priority: bool = False, timeout: float | None = None
    ) -> AsyncIterator[None]:
        """``async with admission.slot(): ...`` holds one slot for the block."""
        await self.acquire(priority=priority, timeout=timeout)
        try:
            yield
        finally:
            self.release()

    def _open(self) -> int:
        return self._limit - self._reserve

    async def _wait(self, queue: deque[asyncio.Future[None]], timeout: float | None) -> None:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        queue.append(fut)
        timer: asyncio.TimerHandle | None = None
        sleeper: asyncio.Task[None] | None = None
        if timeout is not None:
            clock = self._clock
            if clock is None or type(clock) is SystemClock:
                timer = loop.call_later(timeout, self._expire, fut, queue, timeout)
            else:
                sleeper = loop.create_task(self._expire_on(clock, fut, queue, timeout))
        try:
            await fut
        except BaseException:
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                # Handed a slot, then cancelled before running: pass the slot on.
                self.release()
            else:
                self._leave(queue, fut)
            raise
        finally:
            if timer is not None:
                timer.cancel()
            if sleeper is not None:
                sleeper.cancel()

    async def _expire_on(
        self, clock: Clock, fut: asyncio.Future[None], queue: deque[asyncio.Future[None]], t: float
    ) -> None:
        await clock.sleep(t)
        self._expire(fut, queue, t)

    def _expire(
        self, fut: asyncio.Future[None], queue: deque[asyncio.Future[None]], timeout: float
    ) -> None:
        if fut.done():
            return
        self._leave(queue, fut)
        fut.set_exception(
            PoolTimeoutError(
                f"no connection slot within {timeout:g}s ({self._in_use} of {self._limit} in "
                f"use, {self.waiting} waiting)"
            )
        )

    def _leave(self, queue: deque[asyncio.Future[None]], fut: asyncio.Future[None]) -> None:
        try:
            queue.remove(fut)
        except ValueError:
            return
        # The head of the queue may have been the only thing holding others back.
        self._wake()

    def _wake(self) -> None:
        priority, waiters = self._priority, self._waiters
        while priority and self._in_use < self._limit:
            fut = priority.popleft()
            if not fut.done():
                self._in_use += 1
                fut.set_result(None)
        if priority:
            return
        while waiters and self._in_use < self._open():
            fut = waiters.popleft()
            if not fut.done():
                self._in_use += 1
                fut.set_result(None)

    def __repr__(self) -> str:
        return (
            f"Admission(limit={self._limit}, reserve={self._reserve}, in_use={self._in_use}, "
            f"waiting={self.waiting})"
        )


def session_limit(session: aiohttp.ClientSession) -> int | None:
    """The connection limit of ``session``'s connector (``None``: unlimited or unknown)."""
    connector = session.connector
    limit = getattr(connector, "limit", None) if connector is not None else None
    return limit if isinstance(limit, int) and limit > 0 else None


_GATES: weakref.WeakKeyDictionary[aiohttp.ClientSession, Admission] = weakref.WeakKeyDictionary()
#: Sessions a token manager sends its token calls on (shared with the application).
_TOKEN_SESSIONS: weakref.WeakSet[aiohttp.ClientSession] = weakref.WeakSet()


def gate_for(
    session: aiohttp.ClientSession,
    limit: int | None = None,
    *,
    clock: Clock | None = None,
    create: bool = True,
) -> Admission | None:
    """The one admission queue of ``session``, shared by every user of that session.

    Created on first use with ``limit`` (default: the connector's limit; ``None`` if that is
    unlimited); later callers share it whatever limit they ask for, since two queues in front
    of one pool would not be fair to each other. ``create=False`` only looks it up.
    """
    gate = _GATES.get(session)
    if gate is not None or not create:
        return gate
    if limit is None:
        limit = session_limit(session)
        if limit is None:
            return None
    gate = Admission(limit, clock=clock)
    if session in _TOKEN_SESSIONS:
        gate.reserve_lane(1)
    _GATES[session] = gate
    return gate


def share_with_token_calls(session: aiohttp.ClientSession) -> None:
    """Note that a token manager sends its token calls on ``session``: the session's admission
    queue (now or when it is made) keeps one slot for them.

    It must be known before application requests fill the queue: an application request holds
    its slot while it waits for a token, so without the reserved slot a cold start could fill
    every slot with requests waiting for the token call that needs one.
    """
    _TOKEN_SESSIONS.add(session)
    gate = _GATES.get(session)
    if gate is not None:
        gate.reserve_lane(1)


def shares_token_calls(session: aiohttp.ClientSession) -> bool:
    """Whether a token manager sends its token calls on ``session``."""
    return session in _TOKEN_SESSIONS


def token_lane(session: aiohttp.ClientSession) -> Admission | None:
    """The admission queue a token-endpoint call on ``session`` (shared with the application)
    goes through with priority, with one slot reserved for it; ``None``: send directly.

    The queue is the session's own (created here if the application has not used it yet), so
    the application's admitted requests leave a connection free for the token call, which
    queues ahead of every waiting application request. A pool of one connection cannot spare
    one: there the call goes straight to the pool (an application request holding the only
    slot may be waiting for this very token, so queueing behind it could never end).
    """
    share_with_token_calls(session)
    gate = gate_for(session)
    return gate if gate is not None and gate.reserve > 0 else None
