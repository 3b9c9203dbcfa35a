"""The token manager: one cached bearer token, refreshed before it expires, for any number of
concurrent callers.

State of the cached token on :meth:`TokenManager.get_token` (times on the injected clock)::

    FRESH    now < refresh_at      return it (no lock, no await)
    STALE    now < expires_at      return it; start one background refresh if none runs
    EXPIRED  or no token           await the one in-flight acquisition (start it if none)

An acquisition is a task owned by the manager, one per event loop at a time. Callers await it
through :func:`asyncio.shield`, so cancelling a caller never cancels it; it commits the new
pair before it finishes, so a rotated refresh token is never lost; only :meth:`aclose`
cancels it. Refresh tokens are single-use: one is taken out of the manager (under a thread
lock) before it is sent and put back only if the server certainly did not see it.

The acquisition, step by step::

    _start_acquisition      one task per loop; callers await it shielded
    _acquisition            the task: a failed background refresh keeps the valid token
    _retry_until_deadline   attempts, backoff, the shared cool-down, the deadline
    _obtain_once            one attempt: through the fleet's store (stores._fleet.Fleet), or alone
    call_token_endpoint     one HTTP call: the refresh token if held, else the credentials
    commit                  the new pair becomes current (before the task ends)

With a shared store, FRESH also asks the store every few seconds (in the background) whether
another process revoked the token.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import logging
import os
import random
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import attrs

from ._auth_api import AuthAPI, TokenGrant
from ._clock import SYSTEM_CLOCK, Clock, SystemClock
from ._config import (
    DEFAULT_BASE_URL,
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_EXPIRY_MARGIN,
    DEFAULT_EXPIRY_MARGIN_FRACTION,
    DEFAULT_MAX_REFRESH_WINDOW,
    DEFAULT_PERMANENT_FAILURE_COOLDOWN,
    DEFAULT_REFRESH_FRACTION,
    DEFAULT_REFRESH_JITTER,
    DEFAULT_TOKEN_DEADLINE,
    DEFAULT_TOKEN_REQUEST_TIMEOUT,
    ENV_BASE_URL,
    LOGGER_NAME,
    MIN_BACKGROUND_RETRY_INTERVAL,
    REFRESH_TOKEN_LIFETIME,
    REFRESH_TOKEN_SAFETY_MARGIN,
    STORE_CHECK_INTERVAL,
    STORE_LEASE_MARGIN,
    seconds,
)
from ._errors import (
    APIMWError,
    ClientClosedError,
    ConfigurationError,
    InvalidCredentialsError,
    InvalidRefreshTokenError,
    TokenUnavailableError,
)
from ._loops import PerLoop, abandon_task
from ._models import Credentials, Token, fingerprint
from ._retry import Outcome, RetryPolicy, is_transient, outcome_of
from ._sessions import SessionProvider
from ._urls import normalize_base_url
from .stores import TokenStore
from .stores._fleet import Fleet

__all__ = ["RefreshPolicy", "TokenHook", "TokenManager", "TokenStats"]

log = logging.getLogger(f"{LOGGER_NAME}.tokens")

#: Called with every newly obtained token; may be a plain function or a coroutine function.
TokenHook = Callable[[Token], "Awaitable[None] | None"]


@attrs.frozen
class RefreshPolicy:
    """When a token is refreshed and when it counts as expired.

    The refresh window is the last ``fraction`` of the lifetime, at most ``max_window``
    seconds, widened at random by up to ``jitter`` of itself (so that a fleet spreads out).
    The expiry margin is ``expiry_margin`` seconds, at most ``expiry_margin_fraction`` of the
    lifetime (so a 2-second token keeps most of its life).
    """

    fraction: float = attrs.field(default=DEFAULT_REFRESH_FRACTION)
    max_window: float = attrs.field(default=DEFAULT_MAX_REFRESH_WINDOW)
    jitter: float = attrs.field(default=DEFAULT_REFRESH_JITTER)
    expiry_margin: float = attrs.field(default=DEFAULT_EXPIRY_MARGIN)
    expiry_margin_fraction: float = attrs.field(default=DEFAULT_EXPIRY_MARGIN_FRACTION)

    def __attrs_post_init__(self) -> None:
        seconds("RefreshPolicy.max_window", self.max_window)
        seconds("RefreshPolicy.expiry_margin", self.expiry_margin, allow_zero=True)
        seconds("RefreshPolicy.jitter", self.jitter, allow_zero=True)
        seconds(
            "RefreshPolicy.expiry_margin_fraction", self.expiry_margin_fraction, allow_zero=True
        )
        if not 0 < self.fraction < 1:
            raise ConfigurationError("RefreshPolicy.fraction must be between 0 and 1")
        if self.max_window <= 0 or self.expiry_margin < 0 or self.jitter < 0:
            raise ConfigurationError("RefreshPolicy windows and margins must not be negative")
        if not 0 <= self.expiry_margin_fraction < self.fraction:
            raise ConfigurationError(
                "RefreshPolicy.expiry_margin_fraction must be below fraction, or a token would "
                "expire before its refresh window opens"
            )

    def deadlines(
        self, sent_at: float, expires_in: float, rng: random.Random
    ) -> tuple[float, float]:
        """``(refresh_at, expires_at)`` for a token requested at ``sent_at``."""
        margin = min(self.expiry_margin, expires_in * self.expiry_margin_fraction)
        expires_at = sent_at + expires_in - margin
        window = min(expires_in * self.fraction, self.max_window)
        window *= 1.0 + rng.uniform(0.0, self.jitter)
        refresh_at = sent_at + expires_in - max(window, margin)
        return max(sent_at, refresh_at), expires_at


@attrs.define
class TokenStats:
    """Counters of a token manager (read them; they only grow)."""

    #: ``POST auth/token`` calls (credentials).
    token_calls: int = 0
    #: ``POST auth/refresh`` calls.
    refresh_calls: int = 0
    #: Credentials used because a refresh token was refused or its answer was lost.
    fallbacks: int = 0
    #: Token-endpoint calls that failed (any reason).
    failures: int = 0
    #: New tokens committed.
    tokens_obtained: int = 0
    #: Refreshes started in the background while a valid token was held.
    background_refreshes: int = 0
    #: Callers that had to wait for a token (the sum of the two below).
    waits: int = 0
    #: ... because none was held that the server would still accept: the first token, or one
    #: after an invalidation, a revocation or a long outage (expected, e.g. at start-up).
    waits_without_valid_token: int = 0
    #: ... although the cached token was past its expiry margin but still valid at the server:
    #: the refresh did not finish inside its window. Stays 0 when the refresh keeps up.
    waits_with_valid_token: int = 0
    #: Tokens dropped by :meth:`TokenManager.invalidate`.
    invalidations: int = 0
    #: Tokens taken over from a shared store (obtained by another process).
    adopted: int = 0
    #: Times the shared store could not be reached and the manager worked locally.
    store_outages: int = 0

    def as_dict(self) -> dict[str, int]:
        """The counters as a plain dict."""
        return attrs.asdict(self)


@attrs.frozen(repr=False)
class _RefreshToken:
    value: str
    issued_at_wall: float
    #: Known to a shared store (other processes may hold it too).
    shared: bool = False


class _LoopState:
    __slots__ = ("hooks", "inflight")

    def __init__(self) -> None:
        self.inflight: asyncio.Task[Token] | None = None
        self.hooks: set[asyncio.Task[Any]] = set()

    def abandon(self) -> None:
        # Its loop was closed (not shut down) with these still pending: they never finish.
        abandon_task(self.inflight)
        for task in list(self.hooks):
            abandon_task(task)


class TokenManager:
    """Obtains, caches and refreshes APIMW access tokens.

    >>> async with TokenManager(Credentials.from_env()) as tokens:   # doctest: +SKIP
    ...     token = await tokens.get_token()
    ...     headers = {"Authorization": token.authorization}

    ``base_url`` defaults to ``$APIMW_BASE_URL`` or ``https://api.apimw.com/v1``. A ``session``
    you pass is used and never closed; without one the manager owns one per event loop.
    ``deadline`` bounds how long a caller without a valid token waits over all retries before
    a :class:`TokenUnavailableError`. ``on_token`` is called with every new token.
    ``clock`` and ``rng`` are injectable for tests. Nothing here does I/O before the first
    :meth:`get_token`.
    """

    def __init__(
        self,
        credentials: Credentials,
        *,
        base_url: str | None = None,
        session: aiohttp.ClientSession | None = None,
        deadline: float = DEFAULT_TOKEN_DEADLINE,
        request_timeout: float = DEFAULT_TOKEN_REQUEST_TIMEOUT,
        refresh_policy: RefreshPolicy | None = None,
        retry_policy: RetryPolicy | None = None,
        on_token: TokenHook | None = None,
        permanent_failure_cooldown: float = DEFAULT_PERMANENT_FAILURE_COOLDOWN,
        refresh_token_lifetime: float = REFRESH_TOKEN_LIFETIME,
        allow_insecure_http: bool = False,
        store: TokenStore | None = None,
        lease_ttl: float | None = None,
        clock: Clock | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if not isinstance(credentials, Credentials):
            raise ConfigurationError("credentials must be an apimw_async.Credentials")
        deadline = seconds("deadline", deadline)
        request_timeout = seconds("request_timeout", request_timeout)
        permanent_failure_cooldown = seconds(
            "permanent_failure_cooldown", permanent_failure_cooldown, allow_zero=True
        )
        refresh_token_lifetime = seconds("refresh_token_lifetime", refresh_token_lifetime)
        if lease_ttl is not None:
            lease_ttl = seconds("lease_ttl", lease_ttl)
        self._credentials = credentials
        self._base_url = normalize_base_url(
            base_url or os.environ.get(ENV_BASE_URL) or DEFAULT_BASE_URL,
            allow_insecure_http=allow_insecure_http,
        )
        self._clock: Clock = clock or SYSTEM_CLOCK
        # get_token() reads the clock on every call: skip SystemClock's Python frame.
        self._monotonic: Callable[[], float] = (
            time.monotonic if type(self._clock) is SystemClock else self._clock.monotonic
        )
        self._rng = rng or random.Random()
        self._policy = refresh_policy or RefreshPolicy()
        self._retry = retry_policy or RetryPolicy()
        self._deadline = float(deadline)
        self._request_timeout = float(request_timeout)
        self._on_token = on_token
        self._permanent_cooldown = float(permanent_failure_cooldown)
        self._refresh_lifetime = float(refresh_token_lifetime)
        self._sessions = SessionProvider(
            session,
            timeout=aiohttp.ClientTimeout(total=request_timeout, connect=DEFAULT_CONNECT_TIMEOUT),
        )
        self._api = AuthAPI(self._base_url, self._sessions, self._clock)
        if session is not None:
            self._api.check_session(session)
        lease = (
            float(lease_ttl)
            if lease_ttl is not None
            else (self._request_timeout + STORE_LEASE_MARGIN)
        )
        if lease <= self._request_timeout:
            raise ConfigurationError(
                "lease_ttl must be longer than request_timeout, or a lease could lapse while "
                "its holder is still refreshing"
            )
        # One store entry per API key and base URL; a hash, never the key itself.
        self._store_key = hashlib.sha256(
            f"{self._base_url}\0{credentials.api_key}".encode("utf-8", "surrogatepass")
        ).hexdigest()[:32]
        self._fleet: Fleet | None = (
            None
            if store is None
            else Fleet(store, self._store_key, self, clock=self._clock, lease_ttl=lease)
        )
        # When get_token() next asks the store whether the current token was revoked.
        self._store_check_at = float("inf") if store is None else float("-inf")

        self._token: Token | None = None
        self._refresh: _RefreshToken | None = None
        # Guards the refresh token (take / put back / replace), which threads running other
        # event loops may touch too; never held across an await.
        self._lock = threading.Lock()
        self._loops: PerLoop[_LoopState] = PerLoop(
            _LoopState, abandon=_LoopState.abandon, after_fork=self._after_fork
        )
        self._cooldown_until = float("-inf")
        self._cooldown_cause: BaseException | None = None
        self._permanent_error: InvalidCredentialsError | None = None
        self._permanent_until = float("-inf")
        self._next_background_at = float("-inf")
        self._fallback_pending = False
        self._closed = False
        #: Counters; see :class:`TokenStats`.
        self.stats = TokenStats()

    # --- public ------------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """The API base URL (``…/v1``) this manager talks to."""
        return self._base_url

    @property
    def credentials(self) -> Credentials:
        """The credentials used to mint tokens."""
        return self._credentials

    @property
    def token(self) -> Token | None:
        """The cached token, if any (it may be stale or expired; use :meth:`get_token`)."""
        return self._token

    @property
    def clock(self) -> Clock:
        """The clock the token deadlines are measured on."""
        return self._clock

    @property
    def closed(self) -> bool:
        """Whether :meth:`aclose` was called."""
        return self._closed

    @property
    def store(self) -> TokenStore | None:
        """The shared token store, if any."""
        return None if self._fleet is None else self._fleet.store

    @property
    def store_key(self) -> str:
        """This API key's entry in a shared store or rate limiter: a hash of the base URL and
        the API key, never the key itself."""
        return self._store_key

    async def get_token(self) -> Token:
        """A valid access token: cached, or obtained now if none is valid.

        Returns at once while the cached token is valid (starting a background refresh once
        it enters its refresh window); otherwise waits for the single in-flight acquisition.
        Raises :class:`InvalidCredentialsError` at once for wrong credentials, and
        :class:`TokenUnavailableError` if no token could be obtained within ``deadline``.
        """
        token = self._token
        if token is not None:
            now = self._monotonic()
            if now < token.refresh_at:
                if now >= self._store_check_at:
                    self._check_store_in_background(token, now)
                return token
            if now < token.expires_at:
                self._refresh_in_background(now)
                return token
        return await self._wait_for_token()

    async def invalidate(self, token: Token) -> bool:
        """Drop ``token`` after the server refused it (401); ``True`` if it was dropped.

        Only the current token is dropped: a 401 for an older token (one already replaced)
        does not cause another refresh. The refresh token is kept, so the next
        :meth:`get_token` refreshes rather than re-authenticates.
        """
        current = self._token
        if current is None or (current is not token and current.access_token != token.access_token):
            return False
        self._token = None
        if self._fleet is not None:
            # A shared store may still hold it: never adopt it again.
            self._fleet.reject(token.access_token)
        self.stats.invalidations += 1
        log.info("access token %s invalidated after a 401", token.fingerprint)
        return True

    async def revoke(self, *, field: str = "token") -> bool:
        """Revoke the current access token at the server and forget the local token pair.

        The pair is forgotten first, whatever the server answers, so no caller goes on using a
        token being revoked; with a shared store it is marked revoked there too, so no process
        adopts it or sends its refresh token again, and processes holding it drop it within
        5 seconds (their next look at the store). ``field`` names the body field carrying the
        token (the revoke page of the docs is missing; ``token`` is the default). Returns
        ``True`` if a token was revoked by this call.
        """
        token = self._token
        self._token = None
        with self._lock:
            self._refresh = None
        if token is None or token.is_expired(self._clock.monotonic()):
            return False
        if self._closed:
            raise ClientClosedError("this token manager was closed")
        if self._fleet is not None:
            await self._fleet.revoke(token.access_token)
        revoked = await self._api.revoke(
            token.authorization, token.access_token, field=field, timeout=self._request_timeout
        )
        log.info("access token %s revoked", token.fingerprint)
        return revoked

    async def aclose(self) -> None:
        """Cancel background work and close the owned session; the manager is then unusable."""
        if self._closed:
            return
        self._closed = True
        self._token = None
        current = asyncio.get_running_loop()
        tasks: list[asyncio.Task[Any]] = []
        with self._lock:
            self._refresh = None
        states = self._loops.items()
        await self._loops.aclose()
        for loop, state in states:
            pending = [t for t in (state.inflight, *state.hooks) if t is not None and not t.done()]
            if loop is current:
                for task in pending:
                    task.cancel()
                tasks.extend(pending)
            elif not loop.is_closed():
                for task in pending:
                    loop.call_soon_threadsafe(task.cancel)
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        await self._sessions.aclose()

    async def __aenter__(self) -> TokenManager:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        token = self._token
        return (
            f"TokenManager(base_url={self._base_url!r}, credentials={self._credentials!r}, "
            f"token={token.fingerprint if token else None!r})"
        )

    # --- acquisition -------------------------------------------------------------------------

    def _state(self) -> _LoopState:
        return self._loops.get()

    def _after_fork(self) -> None:
        # In a forked child. The parent holds the same refresh token and will spend it: sent
        # from here too, the server would see it twice (reuse) and revoke the whole family. So
        # the child forgets it and gets its own pair with the credentials, or through the
        # shared store, which hands the pair to one process at a time.
        self._lock = threading.Lock()
        self._refresh = None
        self._fallback_pending = False

    def _refresh_in_background(self, now: float) -> None:
        if now < self._next_background_at or now < self._cooldown_until or self._closed:
            # (during a server-advised cool-down the token endpoint is left alone)
            return
        state = self._state()
        if state.inflight is None:
            self.stats.background_refreshes += 1
            self._start_acquisition(state, background=True)

    async def _wait_for_token(self) -> Token:
        if self._closed:
            raise ClientClosedError("this token manager was closed")
        state = self._state()
        task = state.inflight
        if task is None:
            if self._permanent_error is not None:
                if self._clock.monotonic() < self._permanent_until:
                    raise self._permanent_error
                self._permanent_error = None
            task = self._start_acquisition(state, background=False)
        stats = self.stats
        stats.waits += 1
        held = self._token
        if held is not None and self._monotonic() < held.obtained_at + held.expires_in:
            stats.waits_with_valid_token += 1
        else:
            stats.waits_without_valid_token += 1
        try:
            # shield: a caller's cancellation or timeout must never cancel the shared task.
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            if task.cancelled() and self._closed:
                # aclose() cancelled the acquisition, not this caller.
                raise ClientClosedError("this token manager was closed") from None
            raise

    def _start_acquisition(self, state: _LoopState, *, background: bool) -> asyncio.Task[Token]:
        """The one acquisition task of this loop (callers await it shielded)."""
        task = asyncio.get_running_loop().create_task(
            self._acquisition(state, background), name="apimw-token-acquire"
        )
        state.inflight = task
        task.add_done_callback(_retrieve)
        return task

    async def _acquisition(self, state: _LoopState, background: bool) -> Token:
        """The task's body: retry until a token or the deadline; a failed background refresh
        is logged and retried later, the valid token staying in use."""
        try:
            return await self._retry_until_deadline(background)
        except Exception as exc:
            if background:
                now = self._clock.monotonic()
                retry_in = max(MIN_BACKGROUND_RETRY_INTERVAL, self._retry.backoff(1, self._rng))
                self._next_background_at = now + retry_in
                log.warning(
                    "background token refresh failed (%s); the current token stays in use, "
                    "retrying in %.1fs",
                    _describe(exc),
                    retry_in,
                )
            raise
        finally:
            if state.inflight is asyncio.current_task():
                state.inflight = None

    async def _retry_until_deadline(self, background: bool) -> Token:
        """Attempts until one gives a token; backoff and the shared cool-down between them."""
        clock = self._clock
        deadline = clock.monotonic() + self._deadline
        attempt = 0
        while True:
            wait = self._cooldown_until - clock.monotonic()
            if wait > 0:
                if clock.monotonic() + wait >= deadline:
                    raise TokenUnavailableError(
                        f"token endpoint asked to wait {wait:.1f}s, beyond the deadline",
                        cause=self._cooldown_cause,
                    )
                log.info("token endpoint cool-down: waiting %.2fs", wait)
                await clock.sleep(wait)
            try:
                token = await self._obtain_once(deadline, background)
            except InvalidCredentialsError as exc:
                self._permanent_error = exc
                self._permanent_until = clock.monotonic() + self._permanent_cooldown
                log.error("token endpoint refused the credentials (%s)", exc.code)
                raise
            except APIMWError as exc:
                if not is_transient(exc):
                    raise
                wall = clock.time()
                delay = self._retry.delay(exc, attempt, self._rng, now=wall)
                now = clock.monotonic()
                advised = self._retry.server_wait(exc, now=wall) is not None
                if advised:
                    # One shared cool-down: later acquisitions honour it too.
                    self._cooldown_until = max(self._cooldown_until, now + delay)
                    self._cooldown_cause = exc
                continue_at = self._cooldown_until if advised else now + delay
                if continue_at >= deadline:
                    raise TokenUnavailableError(
                        f"no token after {attempt + 1} attempt(s) within {self._deadline:g}s: "
                        f"{_describe(exc)}",
                        cause=exc,
                    ) from exc
                log.info("token call failed (%s); retrying in %.2fs", _describe(exc), delay)
                attempt += 1
                if not advised:
                    await clock.sleep(delay)
                # (an advised wait is slept at the top of the loop, as the shared cool-down)
                continue
            return token

    async def _obtain_once(self, deadline: float, background: bool) -> Token:
        """One attempt at a valid token: through the fleet's store, or alone."""
        fleet = self._fleet
        if fleet is not None:
            token = await fleet.obtain(deadline, background)
            if token is not None:
                return token
            # Working alone while the store is away: a refresh token other processes know may
            # be spent by them at any moment, so only one this process obtained alone is used.
            with self._lock:
                if self._refresh is not None and self._refresh.shared:
                    self._refresh = None
        return self.commit(await self.call_token_endpoint(deadline))

    def _check_store_in_background(self, token: Token, now: float) -> None:
        """Ask the store (in the background) whether another process revoked ``token`` or
        the fleet has a newer pair."""
        fleet = self._fleet
        if fleet is None or self._closed:
            return
        self._store_check_at = now + STORE_CHECK_INTERVAL
        state = self._state()

        task = asyncio.get_running_loop().create_task(
            fleet.check(token), name="apimw-token-store-check"
        )
        state.hooks.add(task)
        task.add_done_callback(state.hooks.discard)
        task.add_done_callback(_retrieve)

    async def call_token_endpoint(self, deadline: float) -> TokenGrant:
        """One token-endpoint call: refresh with the held refresh token, else the credentials."""
        timeout = min(self._request_timeout, max(0.05, deadline - self._clock.monotonic()))
        refresh = self._take_refresh_token()
        if refresh is not None:
            self.stats.refresh_calls += 1
            log.debug("refreshing with refresh token %s", fingerprint(refresh.value))
            try:
                return await self._api.refresh(refresh.value, timeout=timeout)
            except InvalidRefreshTokenError:
                self.stats.failures += 1
                log.info("refresh token refused; re-authenticating with the credentials")
                self._fallback_pending = True
            except APIMWError as exc:
                self.stats.failures += 1
                if outcome_of(exc) is Outcome.NOT_ACTED:
                    self._put_back(refresh)
                else:
                    # The server may have rotated it: never send it again.
                    log.info(
                        "refresh outcome unknown (%s); the refresh token is spent, next attempt "
                        "uses the credentials",
                        _describe(exc),
                    )
                    self._fallback_pending = True
                raise
        if self._fallback_pending:
            self._fallback_pending = False
            self.stats.fallbacks += 1
        self.stats.token_calls += 1
        log.debug("requesting a token with the credentials")
        try:
            return await self._api.request_token(self._credentials, timeout=timeout)
        except APIMWError:
            self.stats.failures += 1
            raise

    # --- the fleet's view of this manager (stores._fleet.FleetMember) ------------------------
    # (with call_token_endpoint, make_token and commit, which the manager uses itself)

    def adopt(self, token: Token) -> None:
        self._token = token
        self._next_background_at = float("-inf")
        self.stats.adopted += 1
        log.info("adopted access token %s from the token store", token.fingerprint)

    def defer_background_refresh(self, until: float) -> None:
        self._next_background_at = until

    def forget(self, token: Token) -> None:
        if self._token is token:
            self._token = None
            with self._lock:
                self._refresh = None

    def hand_over_refresh_token(self, value: str | None, issued_at_wall: float) -> object:
        taken = None if value is None else _RefreshToken(value, issued_at_wall, shared=True)
        with self._lock:
            self._refresh = taken
        return taken

    def refresh_token_unsent(self, handle: object) -> bool:
        with self._lock:
            return handle is not None and self._refresh is handle

    # --- the refresh token slot and the commit step ------------------------------------------

    def _take_refresh_token(self) -> _RefreshToken | None:
        now_wall = self._clock.time()
        with self._lock:
            refresh = self._refresh
            self._refresh = None
        if refresh is None:
            return None
        age = now_wall - refresh.issued_at_wall
        limit = self._refresh_lifetime - min(
            REFRESH_TOKEN_SAFETY_MARGIN, self._refresh_lifetime / 10
        )
        if age >= limit:
            log.info("refresh token lapsed (%.0f s old); using the credentials", age)
            return None
        return refresh

    def _put_back(self, refresh: _RefreshToken) -> None:
        with self._lock:
            if self._refresh is None:
                self._refresh = refresh

    def make_token(
        self,
        access_token: str,
        token_type: str,
        expires_in: float,
        refresh_token: str | None,
        *,
        sent_at: float,
        sent_at_wall: float,
    ) -> Token:
        """A Token whose deadlines count from ``sent_at`` (monotonic), by the refresh policy."""
        refresh_at, expires_at = self._policy.deadlines(sent_at, expires_in, self._rng)
        return Token(
            access_token=access_token,
            token_type=token_type,
            expires_in=expires_in,
            refresh_token=refresh_token,
            obtained_at=sent_at,
            refresh_at=refresh_at,
            expires_at=expires_at,
            issued_at=sent_at_wall,
        )

    def commit(self, grant: TokenGrant, *, shared: bool = False) -> Token:
        token = self.make_token(
            grant.access_token,
            grant.token_type,
            grant.expires_in,
            grant.refresh_token,
            sent_at=grant.sent_at,
            sent_at_wall=grant.sent_at_wall,
        )
        with self._lock:
            if grant.refresh_token is not None:
                self._refresh = _RefreshToken(grant.refresh_token, grant.sent_at_wall, shared)
            current = self._token
            if current is None or current.obtained_at <= token.obtained_at:
                self._token = token
        self._fallback_pending = False
        self._permanent_error = None
        self.stats.tokens_obtained += 1
        now = self._clock.monotonic()
        if token.needs_refresh(now):
            # Arrived already inside its window (tiny lifetime or a slow answer): do not let
            # every call start another refresh right away.
            self._next_background_at = now + max(
                MIN_BACKGROUND_RETRY_INTERVAL, (token.expires_at - now) / 2
            )
            log.warning(
                "new token %s is already due for refresh (expires_in=%gs); next refresh deferred",
                token.fingerprint,
                token.expires_in,
            )
        else:
            self._next_background_at = float("-inf")
        log.info(
            "new access token %s (expires_in=%gs, refresh token %s)",
            token.fingerprint,
            token.expires_in,
            "rotated" if grant.refresh_token else "none",
        )
        self._call_hook(token)
        return token

    def _call_hook(self, token: Token) -> None:
        hook = self._on_token
        if hook is None:
            return
        try:
            result = hook(token)
        except Exception:
            log.exception("on_token hook failed")
            return
        if inspect.isawaitable(result):
            state = self._state()

            async def run() -> None:
                try:
                    await result
                except Exception:
                    log.exception("on_token hook failed")

            task = asyncio.get_running_loop().create_task(run(), name="apimw-token-hook")
            state.hooks.add(task)
            task.add_done_callback(state.hooks.discard)


def _retrieve(task: asyncio.Task[Any]) -> None:
    # Mark the exception as retrieved: a background refresh may end with nobody awaiting it
    # (its failure is logged where it happens).
    if not task.cancelled():
        task.exception()


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"
