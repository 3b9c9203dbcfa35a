"""What every strategy provides, and the probe that counts requests waiting for a refresh."""

from __future__ import annotations

import abc
import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar, TypeVar

import attrs

from apimw_async import Credentials

__all__ = ["Env", "Probe", "Strategy", "Unsupported", "refresh_skew"]

T = TypeVar("T")

#: A token acquisition longer than this counts as "waited" (if a token call overlapped it).
WAIT_THRESHOLD = 0.001


def refresh_skew(lifetime: float) -> float:
    """Seconds before expiry at which the hand-rolled strategies and the peers renew.

    10% of the lifetime, at most 60 s: for real one-hour tokens this is authlib's default
    ``leeway=60``; for the 2-second tokens of the expiry workloads it is 0.2 s.
    """
    return min(60.0, 0.1 * lifetime)


@attrs.frozen
class Env:
    """Where and how a strategy talks to the fake server in one run."""

    base_url: str
    credentials: Credentials
    #: The lifetime the server gives tokens in this workload (peers' skew is derived from it).
    token_lifetime: float
    #: Maximum connections of the HTTP client (requests beyond it queue).
    connections: int = 100
    #: Total timeout of one API request (and of a hand-rolled token call).
    timeout: float = 30.0
    #: Instrument the token path (the probe); off where it would cost throughput.
    instrument: bool = False
    #: A long-lived access token, for the ``static`` baselines only.
    static_token: str = ""

    @property
    def me_url(self) -> str:
        return f"{self.base_url}/auth/me"

    @property
    def skew(self) -> float:
        return refresh_skew(self.token_lifetime)


class Unsupported(Exception):
    """The strategy cannot do what the workload asks (the table says so)."""


class Probe:
    """Counts token acquisitions that waited for a token-endpoint call.

    A strategy reports its token-endpoint calls (:meth:`call_started` / :meth:`call_finished`,
    which also record how long the new token is really valid: until the moment the request was
    sent plus ``expires_in``) and times its token acquisition with :meth:`measure`. An
    acquisition that took longer than 1 ms while a token call was in flight or started counts
    as a wait if it also yielded to the event loop (so a synchronous call slowed by a GC pause
    or by the OS does not count), split by whether a still-valid token was cached when it began.
    """

    def __init__(self) -> None:
        self.started = 0
        self.finished = 0
        self.valid_until = float("-inf")
        self.waits_valid = 0
        self.waits_invalid = 0
        self.wait_time_valid = 0.0
        self.longest_wait = 0.0

    def call_started(self) -> float:
        """Note a token-endpoint call; returns the send time to pass to :meth:`call_finished`."""
        self.started += 1
        return time.monotonic()

    def call_finished(self, sent_at: float, expires_in: float | None) -> None:
        self.finished += 1
        if expires_in is not None:
            self.valid_until = max(self.valid_until, sent_at + expires_in)

    def reset_waits(self) -> None:
        """Forget the waits counted so far (e.g. those of the warm-up)."""
        self.waits_valid = self.waits_invalid = 0
        self.wait_time_valid = self.longest_wait = 0.0

    def activity(self) -> tuple[int, int]:
        return self.started, self.finished

    def valid(self, now: float) -> bool:
        return now < self.valid_until

    async def measure(self, acquire: Callable[[], Awaitable[T]]) -> T:
        # A callback queued now can only run if ``acquire`` yields to the event loop: that
        # tells a real wait from a synchronous call that a GC pause or preemption made slow.
        yielded = _Flag()
        marker = asyncio.get_running_loop().call_soon(yielded.set)
        t0 = time.monotonic()
        valid = self.valid(t0)
        started0, finished0 = self.activity()
        try:
            return await acquire()
        finally:
            marker.cancel()
            elapsed = time.monotonic() - t0
            if yielded.value and elapsed > WAIT_THRESHOLD:
                started1, _ = self.activity()
                if started0 > finished0 or started1 > started0:
                    self.longest_wait = max(self.longest_wait, elapsed)
                    if valid:
                        self.waits_valid += 1
                        self.wait_time_valid += elapsed
                    else:
                        self.waits_invalid += 1

    def as_dict(self) -> dict[str, Any]:
        return {
            "waits_valid": self.waits_valid,
            "waits_invalid": self.waits_invalid,
            "wait_time_valid_s": round(self.wait_time_valid, 4),
            "longest_wait_ms": round(self.longest_wait * 1000, 2),
        }


class _Flag:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = False

    def set(self) -> None:
        self.value = True


class Strategy(abc.ABC):
    """One way of sending authenticated APIMW requests.

    Lifecycle per run: ``await start()``, any number of ``await request()``, ``await close()``.
    ``request()`` sends ``GET /v1/auth/me`` and parses the JSON like an application would; it
    returns the HTTP status the application sees, or raises what the application would see.
    """

    #: Row name in the tables.
    name: ClassVar[str]
    #: The HTTP stack under it.
    transport: ClassVar[str] = "aiohttp"
    #: Strategies that are a transport's physical limit (no token work at all).
    baseline: ClassVar[bool] = False
    #: What the strategy cannot do, for the tables (``None``: everything the workloads ask).
    limitation: ClassVar[str | None] = None

    def __init__(self, env: Env) -> None:
        self.env = env
        self.probe = Probe()

    @abc.abstractmethod
    async def start(self) -> None:
        """Create sessions; no token work (cold-burst runs start right after this)."""

    @abc.abstractmethod
    async def request(self) -> int:
        """One authenticated ``GET /auth/me``; the status the application sees."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release everything."""

    @abc.abstractmethod
    def token_path(self) -> Callable[[], Awaitable[Any]]:
        """The per-request token work without HTTP: acquire the token, build the header.

        Used by the hot-path micro-benchmark after one warm-up request (so the cache is fresh).
        """

    def counters(self) -> dict[str, Any]:
        """Strategy-specific counters reported with each run (besides the probe's)."""
        return {}
