"""The one place that decides whether a failed call is retried, and after how long.

Used by the token manager for token-endpoint calls and by the client for API calls, so that
backoff, ``Retry-After`` handling and the "did the server act on it?" judgement are the same
everywhere.
"""

from __future__ import annotations

import enum
import random

import attrs

from ._config import DEFAULT_BACKOFF_BASE, DEFAULT_BACKOFF_CAP, MAX_RETRY_AFTER
from ._errors import (
    APIConnectionError,
    APIMWError,
    RateLimitError,
    ServerError,
)

__all__ = ["Outcome", "RetryPolicy", "outcome_of"]


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


@attrs.frozen
class RetryPolicy:
    """Exponential backoff with full jitter, honouring server-advised waits.

    ``max_attempts`` counts the first try. ``max_wait`` bounds the total time spent waiting
    between attempts of one call. A server-advised wait (``Retry-After`` or
    ``error.retry_after``) is used as given, up to ``max_retry_after``.
    """

    max_attempts: int = attrs.field(default=3, validator=attrs.validators.ge(1))
    backoff_base: float = attrs.field(
        default=DEFAULT_BACKOFF_BASE, validator=attrs.validators.gt(0)
    )
    backoff_cap: float = attrs.field(default=DEFAULT_BACKOFF_CAP, validator=attrs.validators.gt(0))
    max_wait: float = attrs.field(default=30.0, validator=attrs.validators.ge(0))
    max_retry_after: float = attrs.field(default=MAX_RETRY_AFTER, validator=attrs.validators.ge(0))

    def backoff(self, attempt: int, rng: random.Random | None = None) -> float:
        """Full-jitter delay before retry number ``attempt`` (0 for the first retry)."""
        ceiling = min(self.backoff_cap, self.backoff_base * (2.0 ** min(attempt, 62)))
        return (rng or random).uniform(0.0, ceiling)

    def server_wait(self, error: BaseException) -> float | None:
        """The wait the server asked for, if any (capped at ``max_retry_after``)."""
        retry_after = getattr(error, "retry_after", None)
        if isinstance(retry_after, (int, float)) and retry_after >= 0:
            return min(float(retry_after), self.max_retry_after)
        return None

    def delay(self, error: BaseException, attempt: int, rng: random.Random | None = None) -> float:
        """How long to wait before the next attempt after ``error``."""
        advised = self.server_wait(error)
        if advised is not None:
            # A little jitter on top so that many clients told "60" do not return in lockstep.
            return advised + (rng or random).uniform(0.0, min(1.0, advised * 0.1))
        return self.backoff(attempt, rng)
