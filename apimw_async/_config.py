"""Defaults, as named constants in one place.

Every tunable of the SDK has its default here, so that the documentation, the constructors and
the tests agree on one number.
"""

from __future__ import annotations

import math
from typing import Any, Final

from ._errors import ConfigurationError

#: The documented production base URL (``/v1`` included).
DEFAULT_BASE_URL: Final = "https://api.apimw.com/v1"

#: Environment variables read by the ``from_env()`` constructors.
ENV_API_KEY: Final = "APIMW_API_KEY"
ENV_API_SECRET: Final = "APIMW_API_SECRET"
ENV_BASE_URL: Final = "APIMW_BASE_URL"

#: Per-request timeout for API calls (aiohttp's own default is 300 s, far too long for an SDK).
DEFAULT_REQUEST_TIMEOUT: Final = 30.0
DEFAULT_CONNECT_TIMEOUT: Final = 10.0

#: Per-attempt timeout of a token-endpoint call; also bounded by the remaining deadline.
DEFAULT_TOKEN_REQUEST_TIMEOUT: Final = 5.0

#: How long a caller with no valid token waits, over all retries, before a typed error.
DEFAULT_TOKEN_DEADLINE: Final = 10.0

#: Refresh window: refresh once this fraction of the lifetime remains ...
DEFAULT_REFRESH_FRACTION: Final = 0.2
#: ... but never earlier than this many seconds before expiry (long-lived tokens) ...
DEFAULT_MAX_REFRESH_WINDOW: Final = 300.0
#: ... widened by up to this fraction of the window, at random, so a fleet spreads out.
DEFAULT_REFRESH_JITTER: Final = 0.25

#: A token is treated as expired this long before the server's expiry (capped by the fraction).
DEFAULT_EXPIRY_MARGIN: Final = 5.0
DEFAULT_EXPIRY_MARGIN_FRACTION: Final = 0.05

#: Documented lifetimes.
DEFAULT_ACCESS_TOKEN_LIFETIME: Final = 3600.0
REFRESH_TOKEN_LIFETIME: Final = 30 * 24 * 3600.0
#: A refresh token this close to its 30-day end is not sent any more (clock skew, latency).
REFRESH_TOKEN_SAFETY_MARGIN: Final = 3600.0

#: Exponential backoff with full jitter for retried calls.
DEFAULT_BACKOFF_BASE: Final = 0.25
DEFAULT_BACKOFF_CAP: Final = 8.0
#: A server-sent Retry-After longer than this is not waited out inside one call.
MAX_RETRY_AFTER: Final = 120.0

#: After INVALID_CREDENTIALS, new callers get the same error without a new call for this long.
DEFAULT_PERMANENT_FAILURE_COOLDOWN: Final = 10.0

#: After a failed background refresh (a valid token still held), wait at least this long.
MIN_BACKGROUND_RETRY_INTERVAL: Final = 1.0

#: Name of the package logger; child loggers hang below it.
LOGGER_NAME: Final = "apimw_async"

#: Shared token stores: the longest lease outlives one token-endpoint attempt by this much ...
STORE_LEASE_MARGIN: Final = 3.0
#: ... but a lease is at most this fraction of the token lifetime, and at least this long (it is
#: renewed every third of its length while its holder works; a dead holder's lapses) ...
STORE_LEASE_LIFETIME_FRACTION: Final = 0.25
STORE_MIN_LEASE_TTL: Final = 1.0
#: ... a process waiting on another's lease logs a WARNING every this many seconds (or every
#: half lease, if shorter) ...
STORE_WAIT_WARNING: Final = 1.0
#: ... a process holding a fresh token asks the store whether it was revoked this often ...
STORE_CHECK_INTERVAL: Final = 5.0
#: ... a process in its refresh window looks at the store again this often while another
#: process holds the lease ...
STORE_POLL_INTERVAL: Final = 0.25
#: ... an unreachable store is tried again after this long (meanwhile: local work) ...
STORE_RETRY_INTERVAL: Final = 5.0
#: ... and a stored pair is assumed this much older than its writer's clock says (skew).
STORE_CLOCK_SKEW: Final = 1.0


def seconds(
    name: str, value: Any, *, allow_zero: bool = False, allow_infinite: bool = False
) -> float:
    """``value`` as a duration in seconds, or a :class:`ConfigurationError` naming ``name``.

    Only real numbers: ``"5"``, ``True`` and ``None`` are refused, and so are NaN (which
    compares false to everything, so a ``NaN`` deadline would never pass) and, unless allowed,
    infinity and zero.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigurationError(f"{name} must be a number of seconds, not {type(value).__name__}")
    number = float(value)
    if math.isnan(number) or number < 0 or (number == 0 and not allow_zero):
        kind = "non-negative" if allow_zero else "positive"
        raise ConfigurationError(f"{name} must be a {kind} number of seconds, not {value!r}")
    if math.isinf(number) and not allow_infinite:
        raise ConfigurationError(f"{name} must be finite")
    return number
