"""Time sources.

The token manager never reads the time directly: it asks a :class:`Clock`. Production code uses
:data:`SYSTEM_CLOCK`; tests inject a :class:`FakeClock` and move time forward by hand, which is
deterministic on a loaded machine (patching ``time`` under a running event loop is not).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from typing import Protocol, runtime_checkable


@runtime_checkable
class Clock(Protocol):
    """What the SDK needs to know about time."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes backwards (expiry decisions)."""

    def time(self) -> float:
        """Wall-clock seconds since the Unix epoch (the 30-day refresh-token life, stores)."""

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` on this clock (backoff between retries)."""


class SystemClock:
    """The real clock: :func:`time.monotonic`, :func:`time.time` and :func:`asyncio.sleep`."""

    __slots__ = ()

    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))

    def __repr__(self) -> str:
        return "SystemClock()"


SYSTEM_CLOCK = SystemClock()


class FakeClock:
    """A clock that only moves when told to, for tests.

    ``advance(seconds)`` moves both the monotonic and the wall time and wakes every
    :meth:`sleep` whose deadline has passed. ``await wait_for_sleepers(n)`` waits (on events,
    not on time) until at least ``n`` coroutines are sleeping on this clock, so a test can
    advance time exactly when the code under test is waiting for it.
    """

    def __init__(self, *, monotonic: float = 10_000.0, wall: float = 1_767_225_600.0) -> None:
        self._mono = float(monotonic)
        self._offset = float(wall) - float(monotonic)
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()
        self._watchers: list[asyncio.Future[None]] = []

    def monotonic(self) -> float:
        return self._mono

    def time(self) -> float:
        return self._mono + self._offset

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._mono + seconds, next(self._seq), fut))
        self._notify_watchers()
        try:
            await fut
        finally:
            if not fut.done():
                fut.cancel()

    @property
    def sleepers(self) -> int:
        """How many coroutines are sleeping on this clock right now."""
        return sum(1 for _, _, fut in self._sleepers if not fut.done())

    def next_deadline(self) -> float | None:
        """The monotonic time of the earliest pending sleep, or ``None``."""
        self._drop_done()
        return self._sleepers[0][0] if self._sleepers else None

    def advance(self, seconds: float) -> None:
        """Move time forward and wake the sleepers that are due."""
        if seconds < 0:
            raise ValueError("a clock does not go backwards")
        self._mono += seconds
        while self._sleepers and self._sleepers[0][0] <= self._mono:
            _, _, fut = heapq.heappop(self._sleepers)
            if not fut.done():
                fut.set_result(None)

    def advance_to_next_deadline(self) -> float:
        """Jump to the earliest pending sleep's deadline; returns how far time moved."""
        deadline = self.next_deadline()
        if deadline is None:
            return 0.0
        step = max(0.0, deadline - self._mono)
        self.advance(step)
        return step

    def set_wall(self, wall: float) -> None:
        """Jump the wall clock (not the monotonic one), as an NTP correction would."""
        self._offset = float(wall) - self._mono

    async def wait_for_sleepers(self, count: int = 1) -> None:
        """Return once at least ``count`` coroutines sleep on this clock."""
        while self.sleepers < count:
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._watchers.append(fut)
            try:
                await fut
            finally:
                if fut in self._watchers:
                    self._watchers.remove(fut)

    def _notify_watchers(self) -> None:
        for fut in self._watchers:
            if not fut.done():
                fut.set_result(None)
        self._watchers.clear()

    def _drop_done(self) -> None:
        while self._sleepers and self._sleepers[0][2].done():
            heapq.heappop(self._sleepers)

    def __repr__(self) -> str:
        return f"FakeClock(monotonic={self._mono!r}, sleepers={self.sleepers})"
