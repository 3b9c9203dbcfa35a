"""The one place that decides whether a failed call is retried, and after how long; and the
optional client-side throttle that paces calls so that they do not hit the rate limit at all.

Used by the token manager for token-endpoint calls and by the client for API calls, so that
backoff, ``Retry-After`` handling and the "did the server act on it?" judgement are the same
everywhere.
"""

from __future__ import annotations

import collections
import enum
import random
import threading
from typing import Any, Protocol, runtime_checkable

import attrs
from multidict import CIMultiDict

from ._clock import Clock
from ._config import DEFAULT_BACKOFF_BASE, DEFAULT_BACKOFF_CAP, MAX_RETRY_AFTER, seconds
from ._envelope import RateLimitInfo
from ._errors import (
    APIConnectionError,
    APIMWError,
    ConfigurationError,
    RateLimitError,
    ServerError,
)

__all__ = [
    "Outcome",
    "RateLimiter",
    "RetryPolicy",
    "Throttle",
    "advised_wait",
    "is_idempotent",
    "is_transient",
    "may_retry",
    "outcome_of",
]

#: Methods whose repetition cannot change the server's state (RFC 9110 "safe" methods). The
#: APIMW API has only GET and POST; a POST is never assumed repeatable (no idempotency key).
_IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class Outcome(enum.Enum):
    """What a failure says about the request's effect on the server."""

    #: The server certainly did not act on it (refused connection, 429): safe to repeat.
    NOT_ACTED = "not_acted"
    #: It may have acted (timeout, reset after sending, 5xx): repeating may duplicate it.
    UNKNOWN = "unknown"
    #: The server answered with a final refusal (4xx other than 429, malformed body).
    FINAL = "final"


def outcome_of(error: BaseException) -> Outcome:
    """Classify a failure of one HTTP call."""
    if isinstance(error, RateLimitError):
        return Outcome.NOT_ACTED
    if isinstance(error, APIConnectionError):
        return Outcome.UNKNOWN if error.sent else Outcome.NOT_ACTED
    if isinstance(error, ServerError):
        return Outcome.UNKNOWN
    return Outcome.FINAL


def is_transient(error: BaseException) -> bool:
    """Whether trying again later may succeed (rate limit, 5xx, connection trouble)."""
    return isinstance(error, APIMWError) and outcome_of(error) is not Outcome.FINAL


def is_idempotent(method: str) -> bool:
    """Whether a request with ``method`` may be repeated after an unknown outcome."""
    return method.upper() in _IDEMPOTENT_METHODS


def may_retry(error: BaseException, *, idempotent: bool) -> bool:
    """Whether repeating the failed request is safe and may help.

    A request the server certainly did not act on (429, connection refused) may always be
    repeated; one whose effect is unknown (timeout or reset after sending, 5xx) only if it is
    idempotent: the API has no idempotency key, so a repeated send could deliver twice.
    """
    if not isinstance(error, APIMWError):
        return False
    outcome = outcome_of(error)
    return outcome is Outcome.NOT_ACTED or (outcome is Outcome.UNKNOWN and idempotent)


def advised_wait(error: BaseException, *, now: float | None = None) -> float | None:
    """The wait the server advised for ``error``, in seconds, uncapped; ``None`` if none.

    In order: the ``Retry-After`` header, then the body's ``error.retry_after`` (both already
    merged, in that order, into ``RateLimitError.retry_after`` by the envelope parser), then
    for a 429 ``X-RateLimit-Reset`` minus ``now`` (epoch seconds; skipped when ``now`` is not
    given or the reset is not in the future).
    """
    retry_after = getattr(error, "retry_after", None)
    if (
        isinstance(retry_after, (int, float))
        and not isinstance(retry_after, bool)
        and retry_after >= 0
    ):
        return float(retry_after)
    if now is not None and isinstance(error, RateLimitError):
        info = RateLimitInfo.from_headers(CIMultiDict(error.headers), now=now)
        return info.reset_in(now)
    return None


def _attempts(_: Any, attribute: attrs.Attribute[int], value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigurationError(f"RetryPolicy.{attribute.name} must be an integer >= 1")


def _positive(_: Any, attribute: attrs.Attribute[float], value: Any) -> None:
    seconds(f"RetryPolicy.{attribute.name}", value)


def _non_negative(_: Any, attribute: attrs.Attribute[float], value: Any) -> None:
    seconds(f"RetryPolicy.{attribute.name}", value, allow_zero=True)


@attrs.frozen
class RetryPolicy:
    """Exponential backoff with full jitter, honouring server-advised waits.

    ``max_attempts`` counts the first try. ``max_wait`` bounds the total time spent waiting
    between attempts of one call: a retry whose wait would go beyond it is not made (the error
    is raised at once instead). A server-advised wait (``Retry-After``, ``error.retry_after``
    or, for a 429, ``X-RateLimit-Reset``) is used as given, up to ``max_retry_after``.

    The token manager uses the same backoff and server-advised waits for token-endpoint calls,
    but bounds its retries by its own ``deadline`` rather than ``max_attempts``/``max_wait``:
    a caller without a token keeps trying for as long as it is willing to wait.

    >>> Client(credentials, retry_policy=RetryPolicy(max_attempts=5, max_wait=90))  # doctest: +SKIP
    """

    max_attempts: int = attrs.field(default=3, validator=_attempts)
    backoff_base: float = attrs.field(default=DEFAULT_BACKOFF_BASE, validator=_positive)
    backoff_cap: float = attrs.field(default=DEFAULT_BACKOFF_CAP, validator=_positive)
    max_wait: float = attrs.field(default=30.0, validator=_non_negative)
    max_retry_after: float = attrs.field(default=MAX_RETRY_AFTER, validator=_non_negative)

    def backoff(self, attempt: int, rng: random.Random | None = None) -> float:
        """Full-jitter delay before retry number ``attempt`` (0 for the first retry)."""
        ceiling = min(self.backoff_cap, self.backoff_base * (2.0 ** min(attempt, 62)))
        return (rng or random).uniform(0.0, ceiling)

    def server_wait(self, error: BaseException, *, now: float | None = None) -> float | None:
        """The wait the server asked for, if any (capped at ``max_retry_after``).

        ``now`` (epoch seconds) lets a 429's ``X-RateLimit-Reset`` count; see
        :func:`advised_wait` for the order.
        """
        advised = advised_wait(error, now=now)
        return None if advised is None else min(advised, self.max_retry_after)

    def delay(
        self,
        error: BaseException,
        attempt: int,
        rng: random.Random | None = None,
        *,
        now: float | None = None,
    ) -> float:
        """How long to wait before the next attempt after ``error``."""
        advised = self.server_wait(error, now=now)
        if advised is not None:
            # A little jitter on top so that many clients told "60" do not return in lockstep.
            return advised + (rng or random).uniform(0.0, min(1.0, advised * 0.1))
        return self.backoff(attempt, rng)

    def next_delay(
        self,
        error: BaseException,
        *,
        attempt: int,
        waited: float,
        idempotent: bool,
        now: float | None = None,
        rng: random.Random | None = None,
    ) -> float | None:
        """The wait before repeating a failed request, or ``None`` to give up and raise.

        ``attempt`` is the number of retries already made (0 after the first try failed),
        ``waited`` the time already spent waiting for this request. Gives up when the request
        may not be repeated (:func:`may_retry`), when ``max_attempts`` is reached, or when the
        wait would take the total beyond ``max_wait``.
        """
        if not may_retry(error, idempotent=idempotent) or attempt + 1 >= self.max_attempts:
            return None
        delay = self.delay(error, attempt, rng, now=now)
        if waited + delay > self.max_wait:
            return None
        return delay


class Throttle:
    """At most ``limit`` request starts in any ``period`` seconds, shared by every task.

    A sliding window, not a token bucket: a bucket of ``limit`` tokens refilled over the period
    lets ``2 × limit`` requests through in one period (a full bucket, then its refill), which a
    per-minute quota would refuse. Each caller reserves the earliest start that keeps every
    window within ``limit`` and sleeps until then on ``clock``, so waiters go in arrival order
    and each sleeps once. Only the last ``limit`` starts are remembered. A caller cancelled
    while it waits leaves its reservation in place (the pace stays on the safe side).
    """

    def __init__(self, limit: int, *, clock: Clock, period: float = 60.0) -> None:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError("a throttle limit is a positive integer")
        if not period > 0:
            raise ValueError("a throttle period must be positive")
        self._limit = limit
        self._period = float(period)
        self._clock = clock
        self._starts: collections.deque[float] = collections.deque(maxlen=limit)
        # Guards the reservations against threads running other event loops; never held
        # across an await.
        self._lock = threading.Lock()

    @property
    def limit(self) -> int:
        """Requests allowed per period."""
        return self._limit

    @property
    def period(self) -> float:
        """The window length in seconds (60 for ``max_requests_per_minute``)."""
        return self._period

    def reserve(self) -> float:
        """Reserve the next start; returns how many seconds from now it is (0 if now)."""
        now = self._clock.monotonic()
        with self._lock:
            starts = self._starts
            at = now if len(starts) < self._limit else max(now, starts[0] + self._period)
            starts.append(at)
        return at - now

    async def acquire(self) -> float:
        """Wait for this caller's turn; returns the time waited (0 if none)."""
        wait = self.reserve()
        if wait > 0:
            await self._clock.sleep(wait)
        return wait

    def __repr__(self) -> str:
        return f"Throttle(limit={self._limit}, period={self._period:g})"


@runtime_checkable
class RateLimiter(Protocol):
    """Paces one API key's requests across processes (``Client(rate_limiter=...)``).

    The client calls :meth:`acquire` with its token in hand, right before each send, and
    :meth:`release` with the returned slot once the answer (or the failure) is back, whatever
    happened; a 429 or an exhausted ``X-RateLimit-Remaining`` makes it call :meth:`pause`
    before the release. ``key`` identifies the API key (a hash, never the key itself).
    :class:`apimw_async.stores.redis.RedisRateLimiter` is the fleet-wide implementation.
    """

    async def acquire(self, key: str) -> str:
        """Wait until a request may go out now; returns the slot it holds."""
        ...

    async def release(self, key: str, slot: str) -> None:
        """The request holding ``slot`` is over (answered, failed or never sent)."""
        ...

    async def pause(self, key: str, seconds: float | None) -> None:
        """Hold every request of ``key`` back for ``seconds`` (``None``: the limiter's own
        default), because the server said the quota is spent."""
        ...
