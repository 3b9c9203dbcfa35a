"""Time sources.

The token manager never reads the time directly: it asks a :class:`Clock`. Production code uses
:data:`SYSTEM_CLOCK`; tests inject a :class:`FakeClock` and move time forward by hand or let it
jump whenever the event loop is idle, which is deterministic on a loaded machine (patching
``time`` under a running event loop is not).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from typing import Any, Protocol, runtime_checkable


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

#: Real seconds the event loop must stay idle before an auto-advancing FakeClock jumps.
DEFAULT_IDLE_GRACE = 0.05
#: Real seconds of idleness after which a wait on a FakeClock that nothing can end fails.
DEFAULT_STALL_TIMEOUT = 2.0


#: A ready callback or a due real timer defers a jump for at most this many idle graces.
_HOLD_LIMIT = 10


class ClockStalledError(RuntimeError):
    """A wait on a :class:`FakeClock` that nothing could ever end.

    Raised into the waiting coroutine (``sleep`` on a clock nobody advances,
    ``wait_for_sleepers`` for sleepers that never come) once the event loop has been idle for
    ``stall_timeout`` seconds of real time, instead of hanging the test. Deliberately not an
    :class:`~apimw_async.APIMWError`: the SDK handles those (retries, background refreshes)
    and must let this one reach the test.
    """


class FakeClock:
    """A clock that moves only when told to, or, with ``auto_advance``, when nothing else can.

    ``advance(seconds)`` moves both the monotonic and the wall time and wakes every
    :meth:`sleep` whose deadline has passed. ``await wait_for_sleepers(n)`` waits (on events,
    not on time) until at least ``n`` coroutines are sleeping on this clock, so a test can
    advance time exactly when the code under test is waiting for it.

    ``auto_advance=True`` (the default of the pytest plugin's ``apimw_clock``) makes the clock
    jump to the earliest pending :meth:`sleep` whenever the event loop is idle: no task that
    has moved for ``idle_grace`` seconds of real time, and no callback ready to run nor real
    timer due within that grace (these defer a jump by ten graces at most). A backoff or a
    cool-down then takes no real time and no test code, as with trio's
    ``MockClock(autojump_threshold=0)``; the grace keeps the clock still while a socket (the
    fake server, Redis) is about to answer. Manual :meth:`advance` keeps working alongside.

    A wait nothing could end fails instead of hanging: once the loop has been idle for
    ``stall_timeout`` seconds of real time (``None``: never), a :meth:`sleep` on a clock that
    only moves by hand, or a :meth:`wait_for_sleepers` that no sleeper will satisfy, raises
    :class:`ClockStalledError` naming what it waited for. Use the clock from one event loop.
    """

    def __init__(
        self,
        *,
        monotonic: float = 10_000.0,
        wall: float = 1_767_225_600.0,
        auto_advance: bool = False,
        idle_grace: float = DEFAULT_IDLE_GRACE,
        stall_timeout: float | None = DEFAULT_STALL_TIMEOUT,
    ) -> None:
        if idle_grace <= 0:
            raise ValueError("idle_grace must be positive")
        if stall_timeout is not None and stall_timeout < idle_grace:
            raise ValueError("stall_timeout must be None or at least idle_grace")
        self._mono = float(monotonic)
        self._offset = float(wall) - float(monotonic)
        self._sleepers: list[tuple[float, int, asyncio.Future[None], str]] = []
        self._seq = itertools.count()
        self._watchers: list[asyncio.Future[None]] = []
        self._waits: dict[asyncio.Future[None], int] = {}
        self.auto_advance = bool(auto_advance)
        self.idle_grace = float(idle_grace)
        self.stall_timeout = stall_timeout
        #: How many times the clock jumped by itself (auto-advance).
        self.auto_jumps = 0
        self._advancers: dict[asyncio.AbstractEventLoop, _Advancer] = {}

    def monotonic(self) -> float:
        return self._mono

    def time(self) -> float:
        return self._mono + self._offset

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        heapq.heappush(
            self._sleepers, (self._mono + seconds, next(self._seq), fut, _describe_sleep(seconds))
        )
        self._notify_watchers()
        self._watch(loop)
        try:
            await fut
        finally:
            if not fut.done():
                fut.cancel()

    @property
    def sleepers(self) -> int:
        """How many coroutines are sleeping on this clock right now."""
        return sum(1 for _, _, fut, _ in self._sleepers if not fut.done())

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
            _, _, fut, _ = heapq.heappop(self._sleepers)
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
        loop = asyncio.get_running_loop()
        while self.sleepers < count:
            fut: asyncio.Future[None] = loop.create_future()
            self._watchers.append(fut)
            self._waits[fut] = count
            self._watch(loop)
            try:
                await fut
            finally:
                self._waits.pop(fut, None)
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

    # --- idleness: auto-advance and stalled waits -------------------------------------------

    def _pending(self) -> bool:
        return self.sleepers > 0 or any(not fut.done() for fut in self._watchers)

    def _watch(self, loop: asyncio.AbstractEventLoop) -> None:
        if not self.auto_advance and self.stall_timeout is None:
            return
        advancer = self._advancers.get(loop)
        if advancer is None:
            for old in [old for old in self._advancers if old.is_closed()]:
                del self._advancers[old]
            advancer = self._advancers[loop] = _Advancer(self, loop)
        advancer.start()

    def _on_idle(self, idle: float, hold: bool) -> bool:
        """Called by the loop's advancer after ``idle`` real seconds with no task moving.

        ``hold``: a callback is ready or a real timer fires within the grace, so the clock must
        not jump yet. Returns whether something was woken (time moved or a wait failed).
        """
        if self.auto_advance and self.sleepers:
            # Held back by a wake-up that comes first, but not for ever: a callback or a timer
            # that has not moved any task for this long (a fast ticker) is no reason to wait.
            if hold and idle < _HOLD_LIMIT * self.idle_grace:
                return False
            self.auto_jumps += 1
            self.advance_to_next_deadline()
            return True
        if self.stall_timeout is None or idle < self.stall_timeout:
            return False
        woke = False
        if self.sleepers:  # a manual clock nobody advances
            pending = [entry for entry in sorted(self._sleepers) if not entry[2].done()]
            first = pending[0][0] - self._mono
            for _, _, fut, what in pending:
                fut.set_exception(
                    ClockStalledError(
                        f"{what} can never end: the event loop has been idle for {idle:.1f}s "
                        f"of real time while {len(pending)} coroutine(s) sleep on a FakeClock "
                        f"that moves only by hand (the earliest is due in {first:g}s of fake "
                        "time) and nothing advances it; call clock.advance(...) while the code "
                        "under test sleeps, or use FakeClock(auto_advance=True)"
                    )
                )
            woke = True
        for fut in list(self._watchers):
            if not fut.done():
                count = self._waits.get(fut, 1)
                fut.set_exception(
                    ClockStalledError(
                        f"FakeClock.wait_for_sleepers({count}) can never return: the event loop "
                        f"has been idle for {idle:.1f}s of real time and {self.sleepers} "
                        "coroutine(s) sleep on the clock"
                    )
                )
                woke = True
        return woke

    def __repr__(self) -> str:
        mode = ", auto_advance=True" if self.auto_advance else ""
        return f"FakeClock(monotonic={self._mono!r}, sleepers={self.sleepers}{mode})"


def _describe_sleep(seconds: float) -> str:
    task = asyncio.current_task()
    where = ""
    if task is not None:
        coro: Any = task.get_coro()
        name = getattr(coro, "__qualname__", None) or task.get_name()
        where = f" in task {task.get_name()!r} ({name})"
    return f"FakeClock.sleep({seconds:g}){where}"


class _Advancer:
    """Watches one event loop for idleness on behalf of a :class:`FakeClock`.

    Idle means: no task of the loop has moved (each awaits the same future as at the previous
    check; tasks in ``asyncio.sleep`` aside) for ``idle_grace`` seconds of real time; the
    clock then jumps unless a callback is ready to run or a real timer fires within the
    grace. A reply arriving on a socket wakes the task reading it, so a request in flight
    keeps the loop busy as long as the answer comes within the grace. Runs as a chain of
    timer callbacks (not a task, so it never counts as one), only while the clock has
    sleepers or waiters.
    """

    def __init__(self, clock: FakeClock, loop: asyncio.AbstractEventLoop) -> None:
        self._clock = clock
        self._loop = loop
        self._handle: asyncio.TimerHandle | None = None
        self._snapshot: tuple[object, ...] = ()
        self._quiet_since = 0.0

    def start(self) -> None:
        if self._handle is None and not self._loop.is_closed():
            self._snapshot = ()
            self._quiet_since = time.monotonic()
            self._schedule()

    def _schedule(self) -> None:
        self._handle = self._loop.call_later(self._clock.idle_grace / 4, self._tick)

    def _tick(self) -> None:
        self._handle = None
        clock = self._clock
        if not clock._pending() or self._loop.is_closed():
            self._snapshot = ()  # hold no task or future beyond the watch
            return
        now = time.monotonic()
        snapshot = self._take_snapshot()
        if snapshot != self._snapshot:
            self._snapshot = snapshot
            self._quiet_since = now
        elif now - self._quiet_since >= clock.idle_grace and clock._on_idle(
            now - self._quiet_since, self._about_to_run()
        ):
            self._snapshot = ()
            self._quiet_since = now
        self._schedule()

    def _take_snapshot(self) -> tuple[object, ...]:
        clock = self._clock
        loop: Any = self._loop
        # A task sleeping on a real timer (asyncio.sleep: a future the timer will resolve), or
        # just woken from one, is not progress: a periodic ticker (uvicorn's main loop) would
        # otherwise keep the loop "busy" for ever. Such timers still hold the clock while due
        # within the grace; a task woken by anything else shows up at the next check, awaiting
        # something new.
        timed = {
            id(arg)
            # (a timer that is due has moved to the ready queue)
            for timers in (getattr(loop, "_scheduled", ()), getattr(loop, "_ready", ()))
            for timer in timers
            if isinstance(timer, asyncio.TimerHandle)
            for arg in getattr(timer, "_args", None) or ()
            if isinstance(arg, asyncio.Future)
        }
        # Holding the futures (not their ids) keeps an address from being reused unnoticed.
        waits = frozenset(
            (task, waiter)
            for task in asyncio.all_tasks(loop)
            if not _woken_or_timed(waiter := getattr(task, "_fut_waiter", None), timed)
        )
        return (clock._mono, len(clock._sleepers), len(clock._watchers), waits)

    def _about_to_run(self) -> bool:
        """Whether a callback is ready, or a real timer fires within the grace.

        Either wake-up comes before a jump of the clock, though neither is progress by itself
        (a ticker's wake-ups are not).
        """
        loop: Any = self._loop
        if getattr(loop, "_ready", None):
            return True
        horizon = loop.time() + self._clock.idle_grace
        for timer in getattr(loop, "_scheduled", ()):
            if not timer.cancelled() and timer.when() <= horizon:
                return True
        return False


def _woken_or_timed(waiter: object, timed: set[int]) -> bool:
    return id(waiter) in timed or (isinstance(waiter, asyncio.Future) and waiter.done())
