"""A fleet-wide rate limiter on Redis: one sliding window per API key, on Redis's clock.

Keys (one hash tag per API key, so a cluster keeps them in one slot and every script touches
one slot)::

    {prefix}:{<key>}:rl:flight   zset  slot id -> acquisition time (µs, Redis TIME)
    {prefix}:{<key>}:rl:done     zset  slot id -> completion time (µs, Redis TIME)
    {prefix}:{<key>}:rl:pause    string  end of the shared cool-down (µs, Redis TIME)

A slot counts against every window from the moment it is taken until one window after its
request came back, so whatever the delays between taking the slot, the request reaching the
server and its answer coming back, no window of the server's clock sees more than ``count``
requests (a request reaches the server after its slot was taken and before its answer). A
slot whose holder never releases it (the process died) counts as released ``max_flight``
seconds after it was taken.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import random
import secrets
import time
import weakref
from collections.abc import Callable, Sequence
from typing import Any, Final

import attrs

from .._config import LOGGER_NAME, STORE_RETRY_INTERVAL, seconds
from .._errors import ConfigurationError, StoreUnavailableError
from .._loops import PerLoop
from ._redis_base import (
    bind,
    check_key,
    check_prefix,
    check_url,
    close_client,
    close_quietly,
    connection_options,
    drop_connections,
    new_client,
    pool_connections,
    unavailable,
    writer_transport,
)

__all__ = ["LimiterStats", "RedisRateLimiter"]

log = logging.getLogger(f"{LOGGER_NAME}.stores.redis")

#: A slot not released after this long counts as released then (its holder died); longer
#: than any request (the client's default timeout is 30 s).
DEFAULT_MAX_FLIGHT: Final = 60.0
#: Longest shared cool-down a server answer may impose (a garbled reset must not stop the
#: fleet for a day).
DEFAULT_MAX_PAUSE: Final = 3600.0
#: Cool-down after a 429 without any advice (capped by the shortest window).
DEFAULT_PAUSE: Final = 60.0
DEFAULT_SOCKET_TIMEOUT: Final = 1.0
DEFAULT_MAX_CONNECTIONS: Final = 16
#: Named windows of :meth:`RedisRateLimiter.from_url`.
_NAMED_WINDOWS: Final = (("per_second", 1.0), ("per_minute", 60.0), ("per_hour", 3600.0))
_DAY: Final = 86400.0
_US: Final = 1_000_000

# Every script reads Redis's clock itself: the processes' clocks never enter the window.
_PRELUDE: Final = """
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local function num(x) return string.format('%.0f', x) end
"""

# KEYS: flight, done, pause. ARGV: slot, max_flight µs, longest window µs, then count and
# window µs of each limit. Returns {1, 0} with the slot taken, else {0, µs to wait}.
_ACQUIRE: Final = (
    _PRELUDE
    + """
local pause = tonumber(redis.call('GET', KEYS[3]) or '0')
if pause > now then
  return {0, num(pause - now)}
end
local max_flight = tonumber(ARGV[2])
local longest = tonumber(ARGV[3])
-- Slots whose holder is gone count as released max_flight after they were taken.
local stale_floor = '(' .. num(now - max_flight)
local stale = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', stale_floor, 'WITHSCORES')
for i = 1, #stale, 2 do
  redis.call('ZADD', KEYS[2], num(tonumber(stale[i + 1]) + max_flight), stale[i])
end
if #stale > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', stale_floor)
end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', num(now - longest))
local flying = redis.call('ZCARD', KEYS[1])
local wait = 0
for i = 4, #ARGV, 2 do
  local limit = tonumber(ARGV[i])
  local window = tonumber(ARGV[i + 1])
  local floor = '(' .. num(now - window)
  local done = redis.call('ZCOUNT', KEYS[2], floor, '+inf')
  local excess = done + flying - limit + 1
  if excess > 0 then
    -- Released slots free up one window after their release, oldest first; slots still in
    -- flight no earlier than one window from now.
    local w = window
    if excess <= done then
      local oldest = redis.call('ZRANGEBYSCORE', KEYS[2], floor, '+inf', 'WITHSCORES',
        'LIMIT', excess - 1, 1)
      w = tonumber(oldest[2]) + window - now
    end
    if w > wait then wait = w end
  end
end
if wait > 0 then
  return {0, num(wait)}
end
redis.call('ZADD', KEYS[1], num(now), ARGV[1])
local ttl = math.ceil((longest + max_flight) / 1000) + 1000
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('PEXPIRE', KEYS[2], ttl)
return {1, '0'}
"""
)

# KEYS: flight, done. ARGV: slot. The request is over: its slot counts until one window later.
_RELEASE: Final = (
    _PRELUDE
    + """
if redis.call('ZREM', KEYS[1], ARGV[1]) == 1 then
  redis.call('ZADD', KEYS[2], num(now), ARGV[1])
  return 1
end
return 0
"""
)

# KEYS: pause. ARGV: µs. Extends the shared cool-down (never shortens it). Returns
# {Redis time now, end of the cool-down, slots in flight}.
_PAUSE: Final = (
    _PRELUDE
    + """
local stop = now + tonumber(ARGV[1])
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if stop > current then
  redis.call('SET', KEYS[1], num(stop), 'PX', math.ceil(tonumber(ARGV[1]) / 1000) + 1)
else
  stop = current
end
return {num(now), num(stop), redis.call('ZCARD', KEYS[2])}
"""
)


@attrs.define
class LimiterStats:
    """Counters of one :class:`RedisRateLimiter` in this process."""

    #: Slots taken (through Redis or, during an outage, locally).
    acquired: int = 0
    #: Times a caller had to wait for a slot or a cool-down.
    waits: int = 0
    #: Seconds spent waiting, summed over callers.
    waited: float = 0.0
    #: Cool-downs this process asked for (429 or exhausted remaining).
    pauses: int = 0
    #: Times Redis could not be reached and pacing went local.
    outages: int = 0
    #: The last cool-down set from here: (Redis time when set, its end, slots then in
    #: flight), epoch seconds; ``None`` before the first.
    last_pause: tuple[float, float, int] | None = None


ClientFactory = Callable[[], Any]


def _parse_limits(
    limits: Sequence[tuple[int, float]] | None, named: dict[str, int | None]
) -> tuple[tuple[int, float], ...]:
    pairs: list[tuple[Any, Any]] = list(limits or ())
    for name, window in (*_NAMED_WINDOWS, ("per_day", _DAY)):
        count = named.get(name)
        if count is not None:
            pairs.append((count, window))
    if not pairs:
        raise ConfigurationError(
            "RedisRateLimiter needs at least one limit: per_minute=..., per_hour=..., "
            "per_day=... or limits=[(count, seconds), ...]"
        )
    checked: list[tuple[int, float]] = []
    for pair in pairs:
        try:
            count, window = pair
        except (TypeError, ValueError):
            raise ConfigurationError("a limit is a (count, seconds) pair") from None
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ConfigurationError("a limit's count is a positive integer")
        if isinstance(window, bool) or not isinstance(window, (int, float)) or not window > 0:
            raise ConfigurationError("a limit's window is a positive number of seconds")
        checked.append((count, float(window)))
    return tuple(sorted(set(checked), key=lambda p: p[1]))


def _unavailable(what: str) -> contextlib.AbstractContextManager[None]:
    return unavailable("redis rate limiter", what)


class _LoopClient:
    """The client and registered scripts of one event loop."""

    def __init__(self, client: Any, owns_client: bool, owns_pool: bool) -> None:
        self.client = client
        self.owns_client = owns_client
        self.owns_pool = owns_pool
        self.acquire = client.register_script(_ACQUIRE)
        self.release = client.register_script(_RELEASE)
        self.pause = client.register_script(_PAUSE)

    def abandon(self) -> None:
        """Release the sockets a closed loop left behind (no await possible)."""
        if not self.owns_client:
            return
        connections = pool_connections(self.client)
        drop_connections(connections, [writer_transport(c) for c in connections])

    async def close(self) -> None:
        if not self.owns_client:
            return
        # A client_factory's pool is its maker's (it may serve other clients): like the
        # token store, only a pool made from our URL is disconnected.
        await (close_client if self.owns_pool else close_quietly)(self.client)


class RedisRateLimiter:
    """At most ``count`` requests in any ``seconds`` for each limit, across every process
    using the same Redis, per API key; pass it as ``Client(..., rate_limiter=...)``.

    >>> limiter = RedisRateLimiter.from_url("redis://localhost:6379/0", per_minute=300)
    ...                                                                  # doctest: +SKIP

    Give exactly one of ``url`` (extra keyword arguments go to
    :meth:`redis.asyncio.Redis.from_url`), ``client_factory`` (a callable returning a new client,
    called once per event loop and process; the limiter closes the client it returns, never its
    pool, which may be yours) or ``client`` (a ``redis.asyncio.Redis`` or ``RedisCluster`` you
    made (``decode_responses`` off, the default), e.g. from Sentinel: it is bound to the event
    loop that first uses it and to its process, and never closed by the limiter). Limits:
    ``per_second``, ``per_minute``, ``per_hour``, ``per_day`` and/or ``limits=[(count,
    seconds), ...]``; every one applies.

    The window runs on Redis's clock and a slot is held from the moment it is taken (right
    before the send, token in hand) until one window after the answer came back, so the
    server never counts more than ``count`` in a window whatever the delays on the way. A 429
    or an exhausted ``X-RateLimit-Remaining`` seen by any process pauses all of them (a
    shared cool-down in Redis) until the server's reset, at most ``max_pause`` seconds.

    ``max_flight`` (60 s) is how long a slot not released counts as in flight (its process
    died): keep it above the longest a request may take (the client's ``timeout``, 30 s by
    default), or a request slower than that may let one more through in its window.

    When Redis cannot be reached the limiter paces this process alone with the same limits
    (a WARNING says so; the fleet as a whole may then exceed them and the server's 429s are
    retried as usual) and tries Redis again after a few seconds. ``fallback="raise"`` raises
    :class:`~apimw_async.StoreUnavailableError` instead.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        client: Any = None,
        client_factory: ClientFactory | None = None,
        limits: Sequence[tuple[int, float]] | None = None,
        per_second: int | None = None,
        per_minute: int | None = None,
        per_hour: int | None = None,
        per_day: int | None = None,
        prefix: str = "apimw",
        max_flight: float = DEFAULT_MAX_FLIGHT,
        max_pause: float = DEFAULT_MAX_PAUSE,
        fallback: str = "local",
        socket_timeout: float = DEFAULT_SOCKET_TIMEOUT,
        **redis_kwargs: Any,
    ) -> None:
        if sum(x is not None for x in (url, client, client_factory)) != 1:
            raise ConfigurationError(
                "RedisRateLimiter needs exactly one of url, client or client_factory"
            )
        if url is None and redis_kwargs:
            raise ConfigurationError("redis keyword arguments go with a url")
        max_flight = seconds("max_flight", max_flight)
        max_pause = seconds("max_pause", max_pause, allow_infinite=True)
        socket_timeout = seconds("socket_timeout", socket_timeout)
        if fallback not in ("local", "raise"):
            raise ConfigurationError('fallback is "local" or "raise"')
        self._limits = _parse_limits(
            limits,
            {
                "per_second": per_second,
                "per_minute": per_minute,
                "per_hour": per_hour,
                "per_day": per_day,
            },
        )
        if url is not None:
            check_url(url)
        self._url = url
        self._factory = client_factory
        self._user_client = client
        self._bound: tuple[int, weakref.ref[asyncio.AbstractEventLoop]] | None = None
        self._redis_kwargs = connection_options(
            socket_timeout=socket_timeout,
            connect_timeout=socket_timeout,
            pool_timeout=max(2.0, 2 * socket_timeout),
            max_connections=DEFAULT_MAX_CONNECTIONS,
            extra=redis_kwargs,
        )
        self._prefix = check_prefix(prefix)
        self._max_flight = float(max_flight)
        self._max_pause = float(max_pause)
        self._fallback = fallback
        longest = max(window for _, window in self._limits)
        self._args_tail: list[int] = [round(self._max_flight * _US), round(longest * _US)]
        for count, window in self._limits:
            self._args_tail += [count, round(window * _US)]
        self._queues: PerLoop[dict[str, asyncio.Lock]] = PerLoop(dict)
        self._clients: PerLoop[_LoopClient] = PerLoop(
            self._create_state,
            close=_LoopClient.close,
            abandon=_LoopClient.abandon,
            after_fork=self._after_fork,
        )
        self._down_until = float("-inf")
        self._down = False
        self._local: dict[str, list[collections.deque[float]]] = {}
        self._local_pause: dict[str, float] = {}
        self._rng = random.Random()
        self._closed = False
        self.stats = LimiterStats()

    @classmethod
    def from_url(cls, url: str, **options: Any) -> RedisRateLimiter:
        """A limiter on the Redis server at ``url``; ``options`` as for the constructor."""
        return cls(url, **options)

    @property
    def limits(self) -> tuple[tuple[int, float], ...]:
        """The ``(count, seconds)`` limits, shortest window first."""
        return self._limits

    @property
    def prefix(self) -> str:
        """The prefix of every Redis key of this limiter."""
        return self._prefix

    def keys(self, key: str) -> tuple[str, str, str]:
        """The Redis keys of ``key``: slots in flight, released slots, cool-down."""
        base = f"{self._prefix}:{{{check_key(key, 'rate-limiter')}}}:rl"
        return f"{base}:flight", f"{base}:done", f"{base}:pause"

    # --- RateLimiter -------------------------------------------------------------------------

    async def try_acquire(self, key: str) -> tuple[str | None, float]:
        """Take a slot of ``key`` if one is free now: ``(slot, 0.0)``, else ``(None, seconds
        until one may be)``; the wait is a lower bound while the window is full of requests
        still in flight. During a Redis outage, this process's own pace decides."""
        slot = secrets.token_hex(8)
        if self._redis_usable():
            try:
                state = self._state()
                with _unavailable("acquire"):
                    taken, wait_us = await state.acquire(
                        keys=list(self.keys(key)), args=[slot, *self._args_tail]
                    )
            except StoreUnavailableError as exc:
                self._outage(exc)  # raises with fallback="raise"
            else:
                self._back()
                return (slot, 0.0) if int(taken) else (None, int(wait_us) / _US)
        wait = self._local_reserve(key)
        return ("local:" + slot, 0.0) if wait <= 0 else (None, wait)

    async def acquire(self, key: str) -> str:
        """Wait until a request of ``key`` may go out at once; returns its slot."""
        self.keys(key)
        loop = asyncio.get_running_loop()
        started = loop.time()
        waited = False
        queues = self._queues.get()
        queue = queues.get(key)
        if queue is None:
            queue = queues[key] = asyncio.Lock()
        # One caller per process and key asks Redis at a time, the others queue behind it in
        # arrival order: a full window costs each process one call per freed slot, not one
        # per waiting task.
        async with queue:
            while True:
                slot, wait = await self.try_acquire(key)
                if slot is not None:
                    break
                if not waited:
                    waited = True
                    self.stats.waits += 1
                # A little jitter, so that processes told the same instant do not all race.
                await asyncio.sleep(wait + self._rng.uniform(0.0, min(0.01, wait * 0.05)))
        self.stats.acquired += 1
        if waited:
            self.stats.waited += loop.time() - started
        return slot

    async def release(self, key: str, slot: str) -> None:
        """Mark ``slot``'s request as over: it counts until one window from now."""
        if slot.startswith("local:") or not self._redis_usable():
            return
        flight, done, _ = self.keys(key)
        try:
            state = self._state()
            with _unavailable("release"):
                await state.release(keys=[flight, done], args=[slot])
        except StoreUnavailableError as exc:
            # Not released, the slot counts until max_flight after it was taken: safe side.
            self._outage(exc, raise_=False)

    async def pause(self, key: str, seconds: float | None) -> None:
        """Hold back every process's requests of ``key`` for ``seconds`` (without advice: the
        shortest window, at most a minute), at most ``max_pause``."""
        if seconds is None or not seconds >= 0:
            seconds = min(self._limits[0][1], DEFAULT_PAUSE)
        seconds = min(float(seconds), self._max_pause)
        if seconds <= 0:
            return
        self.stats.pauses += 1
        log.info("rate limit reached; every process pauses for %.2fs", seconds)
        flight, _, pause = self.keys(key)
        if self._redis_usable():
            try:
                state = self._state()
                with _unavailable("pause"):
                    now, until, flying = await state.pause(
                        keys=[pause, flight], args=[round(seconds * _US)]
                    )
            except StoreUnavailableError as exc:
                self._outage(exc, raise_=False)
            else:
                self.stats.last_pause = (int(now) / _US, int(until) / _US, int(flying))
                return
        until_mono = time.monotonic() + seconds
        self._local_pause[key] = max(self._local_pause.get(key, float("-inf")), until_mono)

    # --- lifecycle ---------------------------------------------------------------------------

    async def ping(self) -> None:
        """Check that Redis answers; :class:`~apimw_async.StoreUnavailableError` if not."""
        state = self._state()
        with _unavailable("ping"):
            await state.client.ping()

    async def aclose(self) -> None:
        """Close the running loop's client (others close when their loop shuts down)."""
        self._closed = True
        await self._clients.aclose()

    async def __aenter__(self) -> RedisRateLimiter:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        limits = ", ".join(f"{count}/{window:g}s" for count, window in self._limits)
        return f"RedisRateLimiter(limits=[{limits}], prefix={self._prefix!r})"

    # --- internals ---------------------------------------------------------------------------

    def _redis_usable(self) -> bool:
        return self._fallback == "raise" or time.monotonic() >= self._down_until

    def _outage(self, exc: StoreUnavailableError, *, raise_: bool = True) -> None:
        if self._fallback == "raise":
            if raise_:
                raise exc
            return
        if not self._down:
            self._down = True
            self.stats.outages += 1
            log.warning(
                "%s; pacing this process alone with the same limits, retrying Redis in %gs",
                exc,
                STORE_RETRY_INTERVAL,
            )
        self._down_until = time.monotonic() + STORE_RETRY_INTERVAL

    def _back(self) -> None:
        if self._down:
            self._down = False
            log.warning("redis rate limiter reachable again; pacing the fleet again")

    def _local_reserve(self, key: str) -> float:
        """During an outage: this process's own sliding windows, same limits. Takes a start
        and returns 0 when every window has room, else the seconds until one may."""
        now = time.monotonic()
        paused = self._local_pause.get(key, float("-inf")) - now
        if paused > 0:
            return paused
        windows = self._local.get(key)
        if windows is None:
            windows = [collections.deque(maxlen=count) for count, _ in self._limits]
            self._local[key] = windows
        wait = 0.0
        for (count, window), starts in zip(self._limits, windows, strict=True):
            if len(starts) == count:
                wait = max(wait, starts[0] + window - now)
        if wait > 0:
            return wait
        for starts in windows:
            starts.append(now)
        return 0.0

    def _state(self) -> _LoopClient:
        if self._closed:
            raise StoreUnavailableError("redis rate limiter: the limiter was closed")
        return self._clients.get()

    def _create_state(self) -> _LoopClient:
        if self._user_client is not None:
            bind(self, asyncio.get_running_loop(), "RedisRateLimiter")
            return _LoopClient(self._user_client, owns_client=False, owns_pool=False)
        client = new_client("redis rate limiter", self._url, self._factory, self._redis_kwargs)
        return _LoopClient(client, owns_client=True, owns_pool=self._factory is None)

    def _after_fork(self) -> None:
        # The parent's outage is not the child's: try Redis at once.
        self._down_until = float("-inf")
        self._down = False
