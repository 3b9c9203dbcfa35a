"""The client: authenticated API requests with a one-time replay after a refused token,
retries decided by the one :class:`RetryPolicy`, and an optional throttle."""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Mapping
from typing import Any

import aiohttp
from multidict import CIMultiDictProxy
from yarl import URL

from ._admission import Admission, check_limit, check_timeout, gate_for
from ._clock import Clock
from ._config import (
    DEFAULT_BASE_URL,
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_REQUEST_TIMEOUT,
    ENV_BASE_URL,
    LOGGER_NAME,
    seconds,
)
from ._envelope import ApiResponse, RateLimitInfo
from ._errors import AccessTokenError, APIMWError, ConfigurationError, RateLimitError
from ._models import Credentials, Token
from ._retry import RateLimiter, RetryPolicy, Throttle, advised_wait, is_idempotent
from ._send import send
from ._sessions import SessionProvider
from ._token_manager import TokenManager
from ._urls import is_loopback, normalize_base_url
from ._version import __version__
from .resources.auth import AuthResource
from .resources.webhooks import WebhooksResource
from .resources.whatsapp import WhatsAppResource
from .stores import TokenStore

__all__ = ["Client"]

_URL_CACHE_SIZE = 1024

log = logging.getLogger(f"{LOGGER_NAME}.client")


class Client:
    """The APIMW API client.

    >>> async with Client(Credentials.from_env()) as client:      # doctest: +SKIP
    ...     me = await client.auth.me()
    ...     sent = await client.whatsapp.send_text("+1234567890", "Hello!")

    Give ``credentials`` (a :class:`TokenManager` is made for them) or a ``token_manager`` to
    share one between clients. A ``session`` you pass is used and never closed; without one
    the client owns one per event loop. Every request carries the bearer token; a 401 with
    ``EXPIRED_TOKEN``, ``INVALID_TOKEN`` or ``REVOKED_TOKEN`` drops that token and replays
    the request once with a fresh one.

    ``retry_policy`` is the one :class:`RetryPolicy` of the client (and of the token manager
    it makes): a request is repeated only when that cannot duplicate its effect, i.e. a 429
    or a connection that was never established; a GET also after a 5xx, a timeout or a lost
    connection. A send (POST) whose request may have reached the server is never repeated.
    ``max_requests_per_minute`` turns on a client-side throttle (off by default) shared by
    every task using this client. ``rate_limiter`` (e.g.
    :class:`~apimw_async.stores.redis.RedisRateLimiter`) paces the API key's requests across
    every process sharing it: a slot is taken right before each send, token in hand, and a
    429 or an exhausted ``X-RateLimit-Remaining`` pauses them all.

    Requests are admitted to the connection pool in arrival order (aiohttp's own pool lets
    later requests overtake, so under load a few can wait for as long as the load lasts): at
    most ``max_connections`` are in flight, by default the session's connection limit
    (``connector_limit`` for the session the client owns). ``admission_timeout`` bounds the
    wait for admission (:class:`PoolTimeoutError`, never retried); ``fair_admission=False``
    leaves queueing to aiohttp. Clients sharing one session share one queue.

    ``validate=False`` turns off the checks of documented rules (E.164 numbers, message
    length, HTTPS webhook URLs...) made before sending. ``clock`` and ``rng`` are injectable
    for tests (the backoff sleeps, the throttle and the admission timeout run on ``clock``).

    ``store`` shares the token with other processes (or managers) through a
    :class:`~apimw_async.stores.TokenStore` such as
    :class:`~apimw_async.stores.redis.RedisTokenStore`: the client's token manager loads,
    leases and saves the pair there. The store is yours: the client never closes it, so close
    it after the client. Extra keyword arguments go to the
    :class:`TokenManager` the client makes (``deadline``, ``request_timeout``, ``lease_ttl``,
    ``refresh_policy``, ``on_token``...).
    """

    def __init__(
        self,
        credentials: Credentials | None = None,
        *,
        base_url: str | None = None,
        session: aiohttp.ClientSession | None = None,
        token_manager: TokenManager | None = None,
        timeout: float = DEFAULT_REQUEST_TIMEOUT,
        connector_limit: int = 100,
        allow_insecure_http: bool = False,
        clock: Clock | None = None,
        retry_policy: RetryPolicy | None = None,
        max_requests_per_minute: int | None = None,
        fair_admission: bool = True,
        max_connections: int | None = None,
        admission_timeout: float | None = None,
        rate_limiter: RateLimiter | None = None,
        validate: bool = True,
        rng: random.Random | None = None,
        store: TokenStore | None = None,
        **token_options: Any,
    ) -> None:
        if retry_policy is not None and not isinstance(retry_policy, RetryPolicy):
            raise ConfigurationError("retry_policy must be an apimw_async.RetryPolicy")
        self._retry = retry_policy or RetryPolicy()
        if token_manager is None:
            if credentials is None:
                raise ConfigurationError(
                    "Client needs credentials or a token_manager (or use Client.from_env())"
                )
            if rng is not None:
                token_options["rng"] = rng
            token_manager = TokenManager(
                credentials,
                base_url=base_url,
                session=session,
                allow_insecure_http=allow_insecure_http,
                clock=clock,
                retry_policy=self._retry,
                store=store,
                **token_options,
            )
            self._owns_tokens = True
        else:
            if credentials is not None or token_options or store is not None:
                raise ConfigurationError(
                    "pass either a token_manager or credentials, store and token options, not both"
                )
            self._owns_tokens = False
        timeout = seconds("timeout", timeout)
        self._tokens = token_manager
        # Backoff and throttle run on the client's clock: the token manager's unless given.
        self._clock: Clock = clock or token_manager.clock
        self._rng = rng or random.Random()
        self._base_url = normalize_base_url(
            base_url or token_manager.base_url or os.environ.get(ENV_BASE_URL) or DEFAULT_BASE_URL,
            allow_insecure_http=allow_insecure_http,
        )
        base = URL(self._base_url)
        self._plain_http_ok = allow_insecure_http or (
            base.scheme == "http" and is_loopback(base.host or "")
        )
        self._throttle: Throttle | None = None
        if max_requests_per_minute is not None:
            try:
                self._throttle = Throttle(max_requests_per_minute, clock=self._clock)
            except ValueError:
                raise ConfigurationError(
                    "max_requests_per_minute must be a positive integer"
                ) from None
        if rate_limiter is not None and not isinstance(rate_limiter, RateLimiter):
            raise ConfigurationError(
                "rate_limiter needs async acquire(key), release(key, slot) and pause(key, "
                "seconds) methods (e.g. apimw_async.stores.redis.RedisRateLimiter)"
            )
        self._limiter = rate_limiter
        self._validate = bool(validate)
        self._fair = bool(fair_admission)
        self._max_connections = check_limit(max_connections)
        self._admission_timeout = check_timeout(admission_timeout)
        if self._max_connections is None and session is None and self._fair:
            self._max_connections = connector_limit if connector_limit > 0 else None
        self._last_gate: tuple[aiohttp.ClientSession, Admission | None] | None = None
        self._sessions = SessionProvider(
            session,
            timeout=aiohttp.ClientTimeout(total=timeout, connect=DEFAULT_CONNECT_TIMEOUT),
            connector_limit=connector_limit,
        )
        self._headers = {"Accept": "application/json", "User-Agent": f"apimw-async/{__version__}"}
        self._urls: dict[tuple[str, bool], URL] = {}
        self._rate_limit: RateLimitInfo | None = None
        # The latest rate-limit headers, parsed only when rate_limit is read.
        self._rate_limit_headers: tuple[CIMultiDictProxy[str], float] | None = None
        self._on_headers = self._observe_headers
        self._bearer_cache: tuple[Token, dict[str, str], tuple[str]] | None = None
        self.auth = AuthResource(self)
        self.whatsapp = WhatsAppResource(self)
        self.webhooks = WebhooksResource(self)

    @classmethod
    def from_env(cls, **kwargs: Any) -> Client:
        """A client for ``APIMW_API_KEY`` / ``APIMW_API_SECRET`` (and ``APIMW_BASE_URL``)."""
        return cls(Credentials.from_env(), **kwargs)

    @property
    def tokens(self) -> TokenManager:
        """The token manager this client takes its tokens from."""
        return self._tokens

    @property
    def base_url(self) -> str:
        """The API base URL (``…/v1``)."""
        return self._base_url

    @property
    def rate_limit(self) -> RateLimitInfo | None:
        """The ``X-RateLimit-*`` headers of the latest response that carried them.

        Error responses count too (a 429's ``X-RateLimit-Remaining: 0`` is the latest word).
        """
        pending = self._rate_limit_headers
        if pending is not None:
            self._rate_limit_headers = None
            info = RateLimitInfo.from_headers(pending[0], now=pending[1])
            if info.present:
                self._rate_limit = info
        return self._rate_limit

    @property
    def retry_policy(self) -> RetryPolicy:
        """The retry policy of every request of this client."""
        return self._retry

    @property
    def throttle(self) -> Throttle | None:
        """The client-side throttle, if ``max_requests_per_minute`` was given."""
        return self._throttle

    @property
    def rate_limiter(self) -> RateLimiter | None:
        """The fleet-wide rate limiter, if one was given."""
        return self._limiter

    @property
    def clock(self) -> Clock:
        """The clock backoff sleeps and the throttle run on."""
        return self._clock

    @property
    def validate(self) -> bool:
        """Whether documented rules are checked before a request is sent."""
        return self._validate

    @property
    def allows_plain_http(self) -> bool:
        """Whether this client itself talks plain http (loopback base URL or opted in)."""
        return self._plain_http_ok

    @property
    def closed(self) -> bool:
        """Whether :meth:`aclose` was called."""
        return self._sessions.closed

    async def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, str] | None = None,
        idempotent: bool | None = None,
        encoded: bool = False,
    ) -> ApiResponse:
        """Send an authenticated request to ``{base_url}{path}`` and parse the envelope.

        The low-level call under every resource method, usable for endpoints this SDK does not
        wrap yet. Returns the parsed :class:`ApiResponse`; raises the typed errors of
        :mod:`apimw_async`.

        Retries follow :attr:`retry_policy`. ``idempotent`` says whether the request may be
        repeated when its outcome is unknown (5xx, timeout or lost connection after sending);
        by default only GET, HEAD and OPTIONS are. ``encoded=True`` sends ``path`` exactly as
        given (already percent-encoded, e.g. ``quote(message_id, safe="")``), where by default
        characters not allowed in a URL are quoted and some escapes normalised.

        >>> await client.request("GET", "/auth/me")          # doctest: +SKIP
        ApiResponse(status=200, headers=..., data={...})
        """
        session = self._sessions.get()
        url = self._url(path, encoded)
        policy, clock = self._retry, self._clock
        attempt = 0
        waited = 0.0
        while True:
            try:
                return await self._send_authenticated(session, method, url, json, params)
            except APIMWError as exc:
                failure = exc
            # Only a failed request gets here: the retry decided by the one RetryPolicy.
            repeatable = is_idempotent(method) if idempotent is None else idempotent
            now = clock.time()
            delay = policy.next_delay(
                failure,
                attempt=attempt,
                waited=waited,
                idempotent=repeatable,
                now=now,
                rng=self._rng,
            )
            if delay is None:
                if isinstance(failure, RateLimitError) and failure.retry_after is None:
                    failure.retry_after = advised_wait(failure, now=now)
                raise failure
            attempt += 1
            waited += delay
            log.info(
                "%s %s failed (%s: %s); retry %d of %d in %.2fs",
                method,
                url.path,
                type(failure).__name__,
                failure,
                attempt,
                policy.max_attempts - 1,
                delay,
            )
            await clock.sleep(delay)

    async def _send_authenticated(
        self,
        session: aiohttp.ClientSession,
        method: str,
        url: URL,
        json: Any,
        params: Mapping[str, str] | None,
    ) -> ApiResponse:
        """One attempt: the bearer request, and one replay if the server refused the token.

        A refused token (see :func:`~apimw_async._errors.is_token_refusal`) means the server
        did not act, so the replay is safe for any method; it is dropped (if still current)
        and the request sent once more with a fresh one. Anything else is the caller's to
        retry or raise.
        """
        gate = self._gate(session) if self._fair else None
        replayed = False
        while True:
            if self._throttle is not None:
                await self._throttle.acquire()
            if gate is not None and not gate.try_acquire():
                # Admitted in arrival order before taking the token: a token read after a
                # long queue would be closer to its expiry.
                await gate.acquire(timeout=self._admission_timeout)
            slot: str | None = None
            try:
                token = await self._tokens.get_token()
                if self._limiter is not None:
                    slot, token = await self._take_slot()
                headers, redact = self._bearer(token)
                response = await send(
                    session,
                    method,
                    url,
                    headers=headers,
                    json_body=json,
                    params=params,
                    bearer=True,
                    redact=redact,
                    on_headers=self._on_headers,
                )
                if slot is not None:
                    await self._end_slot(slot, response)
                    slot = None
                return response
            except AccessTokenError:
                if replayed:
                    raise
                replayed = True
                await self._tokens.invalidate(token)
            except APIMWError as exc:
                if slot is not None:
                    await self._end_slot(slot, exc)
                    slot = None
                raise
            finally:
                if slot is not None:  # cancelled or failed unexpectedly: the slot still ends
                    await self._end_slot(slot, None)
                if gate is not None:
                    gate.release()

    def _gate(self, session: aiohttp.ClientSession) -> Admission | None:
        last = self._last_gate
        if last is not None and last[0] is session:
            return last[1]
        gate = gate_for(session, self._max_connections, clock=self._clock)
        self._last_gate = (session, gate)
        return gate

    @property
    def admission(self) -> Admission | None:
        """The fair-admission queue of the running loop's session, ``None`` if admission is
        off (or the session's pool is unlimited and no ``max_connections`` was given); its
        ``in_use`` and ``waiting`` tell how busy the pool is."""
        return self._gate(self._sessions.get()) if self._fair else None

    def _bearer(self, token: Token) -> tuple[dict[str, str], tuple[str]]:
        # The request headers (and the secret to scrub from errors) are the same for every
        # request with one token: build them once per token.
        cached = self._bearer_cache
        if cached is not None and cached[0] is token:
            return cached[1], cached[2]
        headers = {**self._headers, "Authorization": token.authorization}
        redact = (token.access_token,)
        self._bearer_cache = (token, headers, redact)
        return headers, redact

    async def _take_slot(self) -> tuple[str, Token]:
        """A slot of the fleet-wide rate limiter, taken with the token in hand, and the token
        to send with (the wait for the slot may have outlived the one held before)."""
        assert self._limiter is not None
        slot = await self._limiter.acquire(self._tokens.store_key)
        try:
            return slot, await self._tokens.get_token()
        except BaseException:
            await self._limiter.release(self._tokens.store_key, slot)
            raise

    async def _end_slot(self, slot: str, outcome: ApiResponse | BaseException | None) -> None:
        """Release ``slot``; first pause the fleet when the answer says the quota is spent."""
        assert self._limiter is not None
        key = self._tokens.store_key
        try:
            if isinstance(outcome, RateLimitError):
                await self._limiter.pause(key, advised_wait(outcome, now=self._clock.time()))
            elif isinstance(outcome, ApiResponse) and "X-RateLimit-Remaining" in outcome.headers:
                now = self._clock.time()
                info = RateLimitInfo.from_headers(outcome.headers, now=now)
                if info.remaining is not None and info.remaining <= 0:
                    await self._limiter.pause(key, info.reset_in(now))
        finally:
            await self._limiter.release(key, slot)

    def _url(self, path: str, encoded: bool) -> URL:
        # Parsing a URL costs more than the rest of the request's bookkeeping: keep the
        # parsed ones (bounded: message ids make paths unbounded).
        key = (path, encoded)
        url = self._urls.get(key)
        if url is None:
            if len(self._urls) >= _URL_CACHE_SIZE:
                self._urls.clear()
            url = URL(
                self._base_url + (path if path.startswith("/") else "/" + path), encoded=encoded
            )
            self._urls[key] = url
        return url

    def _observe_headers(self, headers: CIMultiDictProxy[str]) -> None:
        if (
            "X-RateLimit-Remaining" in headers
            or "X-RateLimit-Limit" in headers
            or "X-RateLimit-Reset" in headers
        ):
            self._rate_limit_headers = (headers, self._clock.time())

    async def aclose(self) -> None:
        """Close the owned session (and the token manager, if this client made it)."""
        await self._sessions.aclose()
        if self._owns_tokens:
            await self._tokens.aclose()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"Client(base_url={self._base_url!r}, tokens={self._tokens!r})"
