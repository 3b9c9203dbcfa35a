"""A real, in-process APIMW server for tests, demos and benchmarks.

:class:`FakeAPIMW` runs an :mod:`aiohttp.web` server on ``127.0.0.1`` (a free port by default)
that implements every endpoint of the public docs with their envelopes and error codes:

* auth: ``POST /v1/auth/token``, ``/refresh``, ``/revoke`` and ``GET /v1/auth/me``;
* WhatsApp (:mod:`._fake_whatsapp`): ``POST /v1/whatsapp/messages/send`` and ``/template``,
  ``GET /v1/whatsapp/messages/{message_id}`` (status moving ``sent`` → ``delivered`` → ``read``
  or ``failed`` on the server clock) and ``GET /v1/whatsapp/templates`` (a 45-template
  catalogue, filters, pagination and optional pagination quirks);
* webhooks (:mod:`._fake_webhooks`): ``POST /v1/webhooks`` with the ownership handshake, then
  signed event deliveries (``X-APIMW-Signature``) to the receiver with the documented retry
  schedule, disabling, and optional duplicate deliveries;
* the per-plan rate limit (opt-in) and ``X-RateLimit-*`` headers on every response.

Tests drive it through:

* test helpers that change server state (:meth:`FakeAPIMW.expire_access_tokens`,
  :meth:`FakeAPIMW.revoke_all`, :meth:`FakeAPIMW.inject_delivery`, ...), with expiry, message
  statuses, webhook retries and rate-limit windows judged on an injectable :class:`Clock`;
* :class:`FaultPlan` (``fake.faults``): one-shot or probabilistic errors, dropped connections,
  malformed bodies and delays, optionally *after* the server has committed the operation;
* :class:`FakeStats` (``fake.stats``): counters, and :meth:`FakeAPIMW.wait_until` /
  :meth:`FakeAPIMW.wait_for_deliveries` to wait for them without polling.

Where the public docs are silent (see the Gaps in the API notes) the behaviour chosen here is
documented on the handler or its module and, where a real server could plausibly differ,
configurable.

Example::

    async with FakeAPIMW() as fake, aiohttp.ClientSession() as http:
        fake.faults.add("refresh", "status", status=503, after=True)
        async with http.post(f"{fake.base_url}/auth/token", json={...}) as resp:
            ...
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import itertools
import math
import random
import secrets
from collections.abc import Awaitable, Callable, Iterable, Mapping
from types import MappingProxyType
from typing import Any, Final

import attrs
from aiohttp import web

from .._clock import SYSTEM_CLOCK, Clock
from .._models import Credentials
from ._fake_base import (
    _API_PREFIX,
    _BAD_JSON,
    _HTML,
    _ROUTES,
    FakeStats,
    _b64url,
    _compact_json,
    _endpoint,
    _error,
    _json_object,
    _ok,
    _Reply,
    _required_str,
    _Route,
)
from ._fake_webhooks import DEFAULT_RETRY_SCHEDULE, _WebhooksMixin
from ._fake_whatsapp import _WhatsAppMixin

__all__ = ["FAULT_KINDS", "PLAN_RATE_LIMITS", "FakeAPIMW", "FakeStats", "FaultPlan"]

#: The kinds of fault :meth:`FaultPlan.add` accepts.
FAULT_KINDS: Final = frozenset({"status", "drop", "malformed", "delay"})

_DEFAULT_MALFORMED_BODY: Final = b"<html>bad gateway</html>"

#: The fault codes used when :meth:`FaultPlan.add` is given a status but no code.
_DEFAULT_CODES: Final = {
    400: "INVALID_REQUEST",
    401: "INVALID_TOKEN",
    403: "FORBIDDEN",
    404: "NOT_FOUND",
    409: "CONFLICT",
    422: "VALIDATION_ERROR",
    429: "RATE_LIMIT_EXCEEDED",
}


def _number(value: float) -> int | float:
    # The docs type expires_in as an integer; keep fractions only when a test asks for them.
    return int(value) if float(value).is_integer() else value


#: Always the same, exactly as in the docs' example token: {"alg":"HS256","typ":"JWT"}.
_JWT_HEADER: Final = _b64url(_compact_json({"alg": "HS256", "typ": "JWT"}))


_MISSING_BEARER: Final = _error(401, "INVALID_TOKEN", "Missing or malformed Authorization header")
_UNKNOWN_TOKEN: Final = _error(401, "INVALID_TOKEN", "Access token is invalid")
_EXPIRED_TOKEN: Final = _error(401, "EXPIRED_TOKEN", "Access token has expired")
_REVOKED_TOKEN: Final = _error(401, "REVOKED_TOKEN", "Access token has been revoked")
_INVALID_CREDENTIALS: Final = _error(401, "INVALID_CREDENTIALS", "Invalid API Key or Secret")
_INVALID_REFRESH: Final = _error(
    401, "INVALID_REFRESH_TOKEN", "Refresh token is invalid or expired"
)

#: Requests per minute of each plan (rate-limits page); ``enterprise`` uses ``rate_limit``.
PLAN_RATE_LIMITS: Final[Mapping[str, int | None]] = MappingProxyType(
    {"free": 10, "starter": 60, "professional": 300, "enterprise": None}
)
_WINDOW: Final = 60


# --- faults ----------------------------------------------------------------------------------


@attrs.frozen
class _Fault:
    kind: str
    status: int
    code: str | None = None
    message: str | None = None
    retry_after: int | None = None
    retry_after_header: bool = False
    after: bool = False
    delay: float = 0.0
    body: bytes | None = None
    content_type: str | None = None


@attrs.define
class _Queued:
    endpoint: str
    fault: _Fault
    remaining: int


@attrs.frozen
class _Rates:
    error_500: float
    error_429: float
    drop: float
    malformed: float
    retry_after: int
    retry_after_header: bool
    after: bool


class FaultPlan:
    """Faults :class:`FakeAPIMW` injects, per endpoint name (``"*"`` matches every endpoint).

    Queued faults (:meth:`add`) are consumed first, in the order they were added; when none
    matches, the probabilistic rates (:meth:`set_rate`) are rolled. At most one fault applies to
    a request. Fault kinds:

    ``"status"``
        an error envelope with ``status`` and ``code``; a 429 carries ``error.retry_after``.
    ``"drop"``
        the connection is closed without any HTTP response (aiohttp raises
        ``ServerDisconnectedError`` or ``ClientOSError``). Note that aiohttp's client retries an
        *idempotent* request (GET, e.g. ``/auth/me``) once by itself after such a disconnect, so
        to make a GET fail use ``times=2``.
    ``"malformed"``
        a body that is not the envelope (default ``200`` with ``<html>bad gateway</html>``).
    ``"delay"``
        the request waits ``delay`` seconds (real time) and is then answered normally.

    With ``after=True`` the server first performs the operation (issues or rotates tokens,
    revokes, ...) and only then replaces the answer with the fault: the answer is lost but the
    state is committed. A ``"delay"`` with ``after=True`` commits first, then waits, then
    answers. Every injected fault counts in :attr:`FakeStats.faults_injected`.
    """

    def __init__(self, endpoints: Iterable[str] | None = None, *, seed: int | None = None) -> None:
        self._endpoints = frozenset(endpoints) if endpoints is not None else None
        self._queue: list[_Queued] = []
        self._rates: dict[str, _Rates] = {}
        self._random = random.Random(seed)

    def add(
        self,
        endpoint: str,
        kind: str = "status",
        *,
        status: int | None = None,
        code: str | None = None,
        message: str | None = None,
        retry_after: int | None = None,
        retry_after_header: bool = False,
        times: int = 1,
        after: bool = False,
        delay: float = 0.0,
        body: bytes | None = None,
        content_type: str | None = None,
    ) -> None:
        """Queue a fault for the next ``times`` calls of ``endpoint`` (``"*"`` = any endpoint).

        ``status`` defaults to 500 for ``"status"`` and 200 for ``"malformed"``; ``code``
        defaults to ``INTERNAL_ERROR`` for 5xx and ``RATE_LIMIT_EXCEEDED`` for 429 (whose
        ``error.retry_after`` defaults to 1). A ``Retry-After`` header is sent only with
        ``retry_after_header=True``. ``body``/``content_type`` replace a malformed body.
        """
        self._check_endpoint(endpoint)
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; expected one of {sorted(FAULT_KINDS)}")
        if times < 1:
            raise ValueError("times must be at least 1")
        if delay < 0:
            raise ValueError("delay must not be negative")
        if status is None:
            status = 200 if kind == "malformed" else 500
        if kind == "status" and not 400 <= status <= 599:
            raise ValueError("a status fault needs an error status (400-599)")
        if kind == "status" and status == 429 and retry_after is None:
            retry_after = 1
        fault = _Fault(
            kind=kind,
            status=status,
            code=code,
            message=message,
            retry_after=retry_after,
            retry_after_header=retry_after_header,
            after=after,
            delay=delay,
            body=body,
            content_type=content_type,
        )
        self._queue.append(_Queued(endpoint, fault, times))

    def set_rate(
        self,
        endpoint: str,
        *,
        error_500: float = 0.0,
        error_429: float = 0.0,
        drop: float = 0.0,
        malformed: float = 0.0,
        retry_after: int = 1,
        retry_after_header: bool = False,
        after: bool = False,
    ) -> None:
        """Inject faults at random, each call independently, with these probabilities.

        Rates of ``endpoint`` replace earlier ones; an endpoint without its own rates uses
        those of ``"*"``. All zero removes the rates. Reproducible with ``FakeAPIMW(seed=...)``.
        """
        self._check_endpoint(endpoint)
        probabilities = (error_500, error_429, drop, malformed)
        if any(not 0.0 <= p <= 1.0 for p in probabilities) or sum(probabilities) > 1.0 + 1e-9:
            raise ValueError("rates must lie in [0, 1] and add up to at most 1")
        if not any(probabilities):
            self._rates.pop(endpoint, None)
            return
        self._rates[endpoint] = _Rates(
            error_500, error_429, drop, malformed, retry_after, retry_after_header, after
        )

    def clear(self) -> None:
        """Forget every queued fault and every rate."""
        self._queue.clear()
        self._rates.clear()

    def pending(self, endpoint: str | None = None) -> int:
        """How many queued fault occurrences are left (for ``endpoint`` only, if given)."""
        return sum(q.remaining for q in self._queue if endpoint is None or q.endpoint == endpoint)

    def _check_endpoint(self, endpoint: str) -> None:
        if endpoint != "*" and self._endpoints is not None and endpoint not in self._endpoints:
            raise ValueError(
                f"unknown endpoint {endpoint!r}; expected '*' or one of {sorted(self._endpoints)}"
            )

    def _take(self, endpoint: str) -> _Fault | None:
        """The fault for this call of ``endpoint``, if any (consumes a queued one)."""
        queue = self._queue
        for index, queued in enumerate(queue):
            if queued.endpoint == endpoint or queued.endpoint == "*":
                queued.remaining -= 1
                if queued.remaining <= 0:
                    del queue[index]
                return queued.fault
        if not self._rates:
            return None
        rates = self._rates.get(endpoint) or self._rates.get("*")
        if rates is None:
            return None
        roll = self._random.random()
        if roll < rates.error_500:
            return _Fault("status", 500, after=rates.after)
        roll -= rates.error_500
        if roll < rates.error_429:
            return _Fault(
                "status",
                429,
                retry_after=rates.retry_after,
                retry_after_header=rates.retry_after_header,
                after=rates.after,
            )
        roll -= rates.error_429
        if roll < rates.drop:
            return _Fault("drop", 0, after=rates.after)
        roll -= rates.drop
        if roll < rates.malformed:
            return _Fault("malformed", 200, after=rates.after)
        return None

    def __repr__(self) -> str:
        return f"FaultPlan(pending={self.pending()}, rates={sorted(self._rates)})"


def _fault_reply(fault: _Fault) -> _Reply:
    if fault.kind == "malformed":
        body = _DEFAULT_MALFORMED_BODY if fault.body is None else fault.body
        return _Reply(fault.status, body, fault.content_type or _HTML)
    status = fault.status
    code = (
        fault.code or _DEFAULT_CODES.get(status) or ("INTERNAL_ERROR" if status >= 500 else "ERROR")
    )
    if fault.message is not None:
        message = fault.message
    elif status == 429:
        message = f"Rate limit exceeded. Please retry after {fault.retry_after} seconds."
    else:
        message = "Internal server error" if status >= 500 else "Injected fault"
    headers: dict[str, str] = {}
    if fault.retry_after is not None and fault.retry_after_header:
        headers["Retry-After"] = str(fault.retry_after)
    if status == 429:
        headers["X-RateLimit-Remaining"] = "0"
    return _error(status, code, message, retry_after=fault.retry_after, headers=headers or None)


# --- server state ----------------------------------------------------------------------------


@attrs.define(eq=False)
class _Family:
    """The tokens descended from one ``/auth/token`` call."""

    id: int
    current_access: str | None = None
    revoked: bool = False


@attrs.define(eq=False)
class _AccessToken:
    family: _Family
    expires_at: float
    refresh_token: str
    revoked: bool = False


@attrs.define(eq=False)
class _RefreshToken:
    family: _Family
    expires_at: float
    spent: bool = False
    revoked: bool = False


class FakeAPIMW(_WhatsAppMixin, _WebhooksMixin):
    """An APIMW server for tests: real HTTP on ``127.0.0.1``, every documented endpoint.

    Use ``async with FakeAPIMW() as fake:`` (or :meth:`start` / :meth:`close`) and point a
    client at :attr:`base_url` with :attr:`credentials`. Access-token expiry, message statuses,
    webhook retries and rate-limit windows are judged on ``clock`` (``monotonic()``, wall
    ``time()`` for timestamps and windows), so a :class:`~apimw_async.testing.FakeClock` moves
    them without sleeping; latencies, ``"delay"`` faults and ``webhook_timeout`` are real time.

    The constructor options are also plain attributes that may be changed while running
    (e.g. ``fake.token_lifetime = 5``); they apply to requests handled afterwards.

    Auth options: ``token_lifetime``, ``refresh_token_lifetime``, ``reuse_detection`` (a
    replayed refresh token revokes its family), ``revoke_access_on_refresh``,
    ``revoke_refresh_with_access``; ``token_latency`` / ``api_latency`` add real delay.

    Rate limit: ``plan`` (``free`` 10, ``starter`` 60, ``professional`` 300 requests per
    minute, ``enterprise`` = ``rate_limit``) is also ``tenant.plan`` of ``/auth/me``. With
    ``enforce_rate_limit=True`` every request to a bearer endpoint (not ``/auth/token`` or
    ``/auth/refresh``; ``/auth/me`` included, whatever its token) counts in a fixed 60-s window
    aligned to the wall clock; over the limit the answer is ``429 RATE_LIMIT_EXCEEDED`` with
    ``error.retry_after`` (seconds to the window's end, at least 1) and, with
    ``retry_after_header=True``, a ``Retry-After`` header; nothing is performed. Every response
    carries ``X-RateLimit-Limit``/``-Remaining``/``-Reset`` (epoch seconds of the window end).
    Not enforced (the default, so demos and benchmarks are not throttled), the headers report
    ``rate_limit`` and count every response. Hour and day quotas are not modelled.

    WhatsApp: ``templates`` replaces the built-in catalogue (``DEFAULT_TEMPLATES``); a message is
    ``delivered`` ``delivery_delay`` seconds after it was sent and ``read`` after
    ``read_delay`` (``None``: never), or ``failed`` instead of delivered when the recipient ends
    with one of ``failing_numbers``. ``message_id_style="path-unsafe"`` makes ids containing
    ``/``, ``+`` and ``=`` (test a client's path encoding); ``pagination_quirk``
    (``"total_lies_high"``, ``"ignores_page"``, ``"no_pagination"``) makes the template listing
    misbehave in ways a client's pager must survive.

    Webhooks: receivers get the ownership handshake (skipped with ``verify_webhooks=False``),
    must answer 200 within ``webhook_timeout`` seconds, are retried after the delays of
    ``webhook_retry_schedule`` and disabled after the last one fails; ``duplicate_deliveries``
    is the probability that an event is delivered twice (seeded by ``seed``). The server sleeps
    on ``clock`` only while webhook work is scheduled (at most one sleeper), so tests that
    count a shared FakeClock's sleepers are unaffected unless they register webhooks.

    Test helpers besides the auth ones: :attr:`messages` (every accepted message and its
    request body) and :meth:`message_status`; :attr:`webhooks` (live records: ``verified``,
    ``active``, ``deliveries``, ``failures``; setting ``active`` re-enables one);
    :meth:`wait_for_deliveries` (after registering, sending or advancing the clock: returns once
    the handshakes and deliveries due by then are done); :meth:`verify_webhook`,
    :meth:`inject_delivery` (a payload with a correct, forged, malformed or missing signature)
    and :meth:`simulate_inbound_message` (a ``message.received`` event).

    Choices where the docs are silent: ``/auth/revoke`` needs the bearer header (a revoked
    bearer is still accepted, so a retried revoke answers 200), revokes the ``token`` (or
    ``access_token``) of its JSON body or else the bearer token, and answers 200
    ``{"revoked": true}`` even for unknown tokens, as RFC 7009 does. A missing or garbled
    bearer answers 401 ``INVALID_TOKEN`` on every bearer endpoint. Unparseable or non-object
    JSON bodies answer 400 ``INVALID_REQUEST``. The WhatsApp and webhook choices are listed in
    the docstrings of :mod:`._fake_whatsapp` and :mod:`._fake_webhooks`.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        api_key: str = "ak_test_fake0123456789",
        api_secret: str = "sk_test_fake_secret_0123456789",  # noqa: S107 - a well-known test value
        token_lifetime: float = 3600.0,
        refresh_token_lifetime: float = 30 * 24 * 3600.0,
        token_latency: float = 0.0,
        api_latency: float = 0.0,
        reuse_detection: bool = False,
        revoke_access_on_refresh: bool = False,
        revoke_refresh_with_access: bool = True,
        rate_limit: int = 1_000_000,
        clock: Clock | None = None,
        seed: int | None = None,
        plan: str = "professional",
        enforce_rate_limit: bool = False,
        retry_after_header: bool = False,
        templates: Iterable[Mapping[str, Any]] | None = None,
        delivery_delay: float | None = 1.0,
        read_delay: float | None = 3.0,
        failing_numbers: Iterable[str] = ("0000",),
        message_id_style: str = "urlsafe",
        pagination_quirk: str | None = None,
        verify_webhooks: bool = True,
        webhook_timeout: float = 5.0,
        webhook_retry_schedule: Iterable[float] = DEFAULT_RETRY_SCHEDULE,
        duplicate_deliveries: float = 0.0,
    ) -> None:
        self._credentials = Credentials(api_key, api_secret)
        self.host = host
        self._requested_port = port
        self.token_lifetime = token_lifetime
        """``expires_in`` of tokens issued from now on (seconds)."""
        self.refresh_token_lifetime = refresh_token_lifetime
        self.token_latency = token_latency
        """Extra real-time delay of ``/auth/token`` and ``/auth/refresh``."""
        self.api_latency = api_latency
        """Extra real-time delay of every other endpoint."""
        self.reuse_detection = reuse_detection
        """A spent refresh token presented again revokes its whole family."""
        self.revoke_access_on_refresh = revoke_access_on_refresh
        """A refresh revokes the family's previous access token."""
        self.revoke_refresh_with_access = revoke_refresh_with_access
        """Revoking an access token also revokes the refresh token issued with it."""
        self.rate_limit = rate_limit
        """Requests per minute of the ``enterprise`` plan, and the ``X-RateLimit-Limit``
        reported while the limit is not enforced."""
        self._enforce_rate_limit = enforce_rate_limit
        self.retry_after_header = retry_after_header
        """Also send a standard ``Retry-After`` header with an enforced 429."""
        self.clock: Clock = SYSTEM_CLOCK if clock is None else clock
        self.stats = FakeStats()
        self.faults = FaultPlan((route.name for route in _ROUTES), seed=seed)

        self._access: dict[str, _AccessToken] = {}
        self._refresh: dict[str, _RefreshToken] = {}
        self._family_ids = itertools.count(1)
        self._signing_key = secrets.token_bytes(32)
        digest = hashlib.sha256(api_key.encode("utf-8", "surrogatepass")).hexdigest()
        self._user_id = f"usr_{digest[:12]}"
        self._tenant_id = f"ten_{digest[12:24]}"
        self.plan = plan
        self._request_ids = itertools.count(1)
        self._request_id_prefix = secrets.token_hex(4)
        self._rl_window = -1
        self._rl_used = 0
        self._waiters: list[asyncio.Future[None]] = []
        self._holds: dict[str, asyncio.Event] = {}
        self._recorded: set[str] = set()
        self.arrivals: list[tuple[str, str]] = []
        """``(endpoint, query string)`` of the requests to every endpoint ever held, in the
        order they arrived, from the :meth:`hold` on (see there)."""
        self._runner: web.AppRunner | None = None
        self._closing: asyncio.Future[None] | None = None
        self._port: int | None = None
        self._init_whatsapp(
            templates=templates,
            delivery_delay=delivery_delay,
            read_delay=read_delay,
            failing_numbers=failing_numbers,
            message_id_style=message_id_style,
            pagination_quirk=pagination_quirk,
        )
        self._init_webhooks(
            verify_webhooks=verify_webhooks,
            webhook_timeout=webhook_timeout,
            webhook_retry_schedule=webhook_retry_schedule,
            duplicate_deliveries=duplicate_deliveries,
            seed=seed,
        )

    @property
    def plan(self) -> str:
        """The tenant's plan: its per-minute quota and ``tenant.plan`` of ``/auth/me``."""
        return self._plan

    @plan.setter
    def plan(self, plan: str) -> None:
        if plan not in PLAN_RATE_LIMITS:
            raise ValueError(f"plan must be one of {list(PLAN_RATE_LIMITS)}")
        self._plan = plan
        self._me_reply = _ok(
            {
                "user": {"id": self._user_id, "email": "dev@example.com", "name": "Test Developer"},
                "tenant": {
                    "id": self._tenant_id,
                    "name": "Example Org",
                    "plan": plan,
                    "status": "active",
                },
                "permissions": ["whatsapp:send", "whatsapp:templates", "webhooks:manage"],
            }
        )

    @property
    def enforce_rate_limit(self) -> bool:
        """Answer 429 once a minute's quota of the plan is used up (switching starts afresh:
        the current window's count is forgotten)."""
        return self._enforce_rate_limit

    @enforce_rate_limit.setter
    def enforce_rate_limit(self, enforce: bool) -> None:
        self._enforce_rate_limit = enforce
        self._rl_window = -1

    @property
    def limit_per_minute(self) -> int:
        """The ``X-RateLimit-Limit`` now: the plan's quota if enforced, else ``rate_limit``."""
        if not self._enforce_rate_limit:
            return self.rate_limit
        quota = PLAN_RATE_LIMITS[self._plan]
        return self.rate_limit if quota is None else quota

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Start listening (on a free port unless one was given)."""
        if self._runner is not None:
            raise RuntimeError("FakeAPIMW is already running")
        runner = web.AppRunner(self._build_app(), access_log=None, shutdown_timeout=2.0)
        await runner.setup()
        try:
            # A deep accept queue: hundreds of clients connecting at once would otherwise
            # overflow aiohttp's default of 128 and wait out a 1-s SYN retransmit.
            site = web.TCPSite(runner, self.host, self._requested_port, backlog=4096)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self._closing = asyncio.get_running_loop().create_future()
        self._port = int(runner.addresses[0][1])
        self._webhooks_start()

    async def close(self) -> None:
        """Stop the server; requests still sleeping in a latency or delay are dropped, and
        webhook handshakes, deliveries and scheduled retries are abandoned."""
        runner, self._runner = self._runner, None
        if runner is None:
            return
        self.release()
        if self._closing is not None and not self._closing.done():
            self._closing.set_result(None)
        try:
            await runner.cleanup()
        finally:
            await self._webhooks_close()

    async def __aenter__(self) -> FakeAPIMW:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    def port(self) -> int:
        """The TCP port the server listens on (after :meth:`start`)."""
        if self._port is None:
            raise RuntimeError("FakeAPIMW is not started")
        return self._port

    @property
    def url(self) -> str:
        """The server root, e.g. ``http://127.0.0.1:54321``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def base_url(self) -> str:
        """The API base URL to give a client, e.g. ``http://127.0.0.1:54321/v1``."""
        return self.url + _API_PREFIX

    @property
    def credentials(self) -> Credentials:
        """The API key and secret this server accepts."""
        return self._credentials

    # --- test helpers ------------------------------------------------------------------------

    def expire_access_tokens(self) -> None:
        """Every access token issued so far answers ``EXPIRED_TOKEN`` from now on."""
        for token in self._access.values():
            token.expires_at = float("-inf")

    def revoke_access_token(
        self, access_token: str, *, include_refresh: bool | None = None
    ) -> None:
        """Revoke one access token, as ``POST /auth/revoke`` would (unknown tokens: no-op).

        ``include_refresh`` (default: the ``revoke_refresh_with_access`` option) also revokes
        the refresh token issued together with it.
        """
        token = self._access.get(access_token)
        if token is None:
            return
        token.revoked = True
        if self.revoke_refresh_with_access if include_refresh is None else include_refresh:
            refresh = self._refresh.get(token.refresh_token)
            if refresh is not None:
                refresh.revoked = True

    def revoke_refresh_tokens(self) -> None:
        """Every refresh token issued so far answers ``INVALID_REFRESH_TOKEN`` from now on."""
        for token in self._refresh.values():
            token.revoked = True

    def revoke_all(self) -> None:
        """Revoke every token: access tokens answer ``REVOKED_TOKEN``, refresh tokens fail."""
        for token in self._access.values():
            token.revoked = True
        self.revoke_refresh_tokens()

    def is_access_token_valid(self, access_token: str) -> bool:
        """Whether ``access_token`` would be accepted right now."""
        token = self._access.get(access_token)
        return token is not None and self._access_error(token) is None

    async def wait_until(
        self, predicate: Callable[[FakeStats], bool], timeout: float = 10.0
    ) -> None:
        """Return once ``predicate(stats)`` is true; :class:`TimeoutError` after ``timeout`` s.

        The predicate is re-checked whenever a request changes the stats (no polling).
        """
        await self._wait_for(lambda: predicate(self.stats), timeout)

    def hold(self, endpoint: str) -> None:
        """Keep requests to ``endpoint`` (a route name such as ``"me"`` or ``"token"``) waiting
        until :meth:`release`.

        From then on every request to ``endpoint`` is recorded in :attr:`arrivals`, held or
        not: tests of ordering read what the server saw, in order, without timing anything.
        """
        self.faults._check_endpoint(endpoint)
        self._recorded.add(endpoint)
        if endpoint not in self._holds:
            self._holds[endpoint] = asyncio.Event()

    def release(self, endpoint: str | None = None) -> None:
        """Let the held requests of ``endpoint`` (all endpoints if ``None``) go on."""
        for name in [endpoint] if endpoint is not None else list(self._holds):
            hold = self._holds.pop(name, None)
            if hold is not None:
                hold.set()

    async def wait_arrivals(self, count: int, timeout: float = 10.0) -> None:
        """Return once at least ``count`` requests were recorded in :attr:`arrivals`."""
        await self._wait_for(lambda: len(self.arrivals) >= count, timeout)

    async def wait_for_deliveries(self, timeout: float = 10.0) -> None:
        """Return once no webhook handshake or delivery is in flight or due on the clock.

        Retries scheduled for later on the clock are not waited for: advance the clock, then
        call this again. :class:`TimeoutError` after ``timeout`` real seconds.
        """
        await self._wait_for(self._webhooks_idle, timeout)

    async def _wait_for(self, condition: Callable[[], bool], timeout: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not condition():
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(f"condition not met within {timeout} s; stats: {self.stats}")
            waiter: asyncio.Future[None] = loop.create_future()
            self._waiters.append(waiter)
            try:
                await asyncio.wait((waiter,), timeout=remaining)
            finally:
                if not waiter.done():
                    waiter.cancel()
                    self._waiters.remove(waiter)

    def __repr__(self) -> str:
        where = self.url if self._port is not None else "not started"
        return f"FakeAPIMW({where}, access_tokens={len(self._access)})"

    # --- dispatch ----------------------------------------------------------------------------

    def _build_app(self) -> web.Application:
        app = web.Application()
        by_path: dict[str, list[_Route]] = {}
        for route in _ROUTES:
            by_path.setdefault(_API_PREFIX + route.path, []).append(route)
        for path, routes in by_path.items():
            for route in routes:
                app.router.add_route(route.method, path, self._dispatcher(route))
            # Same resource, any other method: a 405 envelope instead of aiohttp's text page.
            allow = ", ".join(route.method for route in routes)
            app.router.add_route("*", path, functools.partial(self._method_not_allowed, allow))
        app.router.add_route("*", "/{tail:.*}", self._not_found)
        return app

    def _dispatcher(self, route: _Route) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        handle: Callable[[web.Request], Awaitable[_Reply]] = getattr(self, route.handler)
        name, counter = route.name, route.counter
        token_endpoint, bearer = route.token_endpoint, route.bearer

        async def dispatch(request: web.Request) -> web.StreamResponse:
            stats = self.stats
            stats.requests += 1
            stats.calls[name] = stats.calls.get(name, 0) + 1
            if counter is not None:
                setattr(stats, counter, getattr(stats, counter) + 1)
            if token_endpoint:
                if "Authorization" in request.headers:
                    stats.token_calls_with_bearer += 1
            else:
                stats.api_calls += 1
            hold = None
            if self._recorded and name in self._recorded:
                self.arrivals.append((name, request.query_string))
                hold = self._holds.get(name)
            self._changed()
            if hold is not None:
                await hold.wait()

            latency = self.token_latency if token_endpoint else self.api_latency
            if latency > 0 and not await self._sleep(latency):
                return self._drop(request)

            if bearer and self._enforce_rate_limit:
                limited = self._take_quota()
                if limited is not None:
                    stats.rate_limited += 1
                    self._changed()
                    return self._respond(limited)

            fault = self.faults._take(name) if self.faults._queue or self.faults._rates else None
            if fault is None:
                reply = await handle(request)
            else:
                stats.faults_injected += 1
                if fault.kind == "delay":
                    if not fault.after and not await self._sleep(fault.delay):
                        return self._drop(request)
                    reply = await handle(request)
                    if fault.after and not await self._sleep(fault.delay):
                        return self._drop(request)
                else:
                    if fault.after:
                        await handle(request)
                    if fault.kind == "drop":
                        self._changed()
                        return self._drop(request)
                    reply = _fault_reply(fault)

            if bearer and reply.status == 401:
                stats.unauthorized += 1
            self._changed()
            return self._respond(reply)

        return dispatch

    async def _not_found(self, request: web.Request) -> web.StreamResponse:
        return self._unrouted(
            _error(404, "NOT_FOUND", f"No such endpoint: {request.method} {request.path}")
        )

    async def _method_not_allowed(self, allow: str, request: web.Request) -> web.StreamResponse:
        message = f"Method {request.method} is not allowed on {request.path}"
        return self._unrouted(_error(405, "METHOD_NOT_ALLOWED", message, headers={"Allow": allow}))

    def _unrouted(self, reply: _Reply) -> web.StreamResponse:
        self.stats.requests += 1
        self.stats.unknown_requests += 1
        self._changed()
        return self._respond(reply)

    def _window(self) -> tuple[int, float]:
        """The current rate-limit window (its number) and the wall time now."""
        now = self.clock.time()
        window = int(now // _WINDOW)
        if window != self._rl_window:
            self._rl_window, self._rl_used = window, 0
        return window, now

    def _take_quota(self) -> _Reply | None:
        """Count an enforced request in its window; the 429 to answer when over the limit."""
        window, now = self._window()
        if self._rl_used < self.limit_per_minute:
            self._rl_used += 1
            return None
        retry_after = max(1, math.ceil((window + 1) * _WINDOW - now))
        return _error(
            429,
            "RATE_LIMIT_EXCEEDED",
            f"Rate limit exceeded. Please retry after {retry_after} seconds.",
            retry_after=retry_after,
            headers={"Retry-After": str(retry_after)} if self.retry_after_header else None,
        )

    def _respond(self, reply: _Reply) -> web.Response:
        # The hot path of every benchmark: kept inline and cheap.
        now = self.clock.time()
        window = int(now // _WINDOW)
        if window != self._rl_window:
            self._rl_window, self._rl_used = window, 0
        if self._enforce_rate_limit:
            limit = self.limit_per_minute  # counted before the handler, by _take_quota
        else:
            limit = self.rate_limit
            self._rl_used += 1  # reporting only: every response counts
        headers = {
            "Content-Type": reply.content_type,
            "X-RateLimit-Limit": str(limit),
            "X-RateLimit-Remaining": str(max(0, limit - self._rl_used)),
            "X-RateLimit-Reset": str((window + 1) * _WINDOW),
            "X-Request-Id": f"req_{self._request_id_prefix}{next(self._request_ids):010x}",
        }
        if reply.headers:
            headers.update(reply.headers)
        return web.Response(status=reply.status, body=reply.body, headers=headers)

    @staticmethod
    def _drop(request: web.Request) -> web.StreamResponse:
        # With the transport gone, aiohttp's attempt to write this response fails quietly
        # ("premature client disconnection") and the client sees the connection close.
        transport = request.transport
        if transport is not None:
            transport.close()
        return web.Response(status=500)

    async def _sleep(self, seconds: float) -> bool:
        """Sleep in real time; ``False`` if the server started closing meanwhile."""
        closing = self._closing
        if closing is None or closing.done():
            return False
        await asyncio.wait((closing,), timeout=seconds)
        return not closing.done()

    def _changed(self) -> None:
        if self._waiters:
            waiters, self._waiters = self._waiters, []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    # --- tokens ------------------------------------------------------------------------------

    def _issue(self, family: _Family) -> _Reply:
        """Issue an access + refresh token pair in ``family``; the success reply."""
        lifetime = self.token_lifetime
        wall = self.clock.time()
        claims = {
            "sub": self._user_id,
            "tid": self._tenant_id,
            "jti": secrets.token_urlsafe(12),
            "iat": int(wall),
            "exp": int(wall + lifetime),
        }
        signing_input = f"{_JWT_HEADER}.{_b64url(_compact_json(claims))}"
        signature = hmac.new(self._signing_key, signing_input.encode("ascii"), "sha256").digest()
        access = f"{signing_input}.{_b64url(signature)}"
        refresh = "rt_" + secrets.token_urlsafe(24)
        now = self.clock.monotonic()
        self._access[access] = _AccessToken(family, now + lifetime, refresh)
        self._refresh[refresh] = _RefreshToken(family, now + self.refresh_token_lifetime)
        family.current_access = access
        return _ok(
            {
                "access_token": access,
                "token_type": "Bearer",
                "expires_in": _number(lifetime),
                "refresh_token": refresh,
            }
        )

    def _access_error(self, token: _AccessToken) -> _Reply | None:
        if token.revoked or token.family.revoked:
            return _REVOKED_TOKEN
        if self.clock.monotonic() >= token.expires_at:
            return _EXPIRED_TOKEN
        return None

    def _authenticate(self, request: web.Request) -> _Reply | None:
        """``None`` if the bearer token is valid now, else the 401 to answer."""
        bearer, failure = self._bearer(request)
        if failure is not None:
            return failure
        assert bearer is not None
        return self._access_error(self._access[bearer])

    def _bearer(self, request: web.Request) -> tuple[str | None, _Reply | None]:
        """The bearer token of ``request`` and its record, or the 401 to answer."""
        header = request.headers.get("Authorization")
        if header is None or header[:7].lower() != "bearer ":
            return None, _MISSING_BEARER
        value = header[7:].strip()
        if not value or " " in value:
            return None, _MISSING_BEARER
        if value not in self._access:
            return None, _UNKNOWN_TOKEN
        return value, None

    # --- endpoints ---------------------------------------------------------------------------

    @_endpoint(
        "token", "POST", "/auth/token", counter="token_calls", token_endpoint=True, bearer=False
    )
    async def _handle_token(self, request: web.Request) -> _Reply:
        """``POST /auth/token``: credentials for a new token family."""
        body = await _json_object(request)
        if body is None:
            return _BAD_JSON
        api_key = body.get("api_key")
        api_secret = body.get("api_secret")
        if not isinstance(api_key, str) or not isinstance(api_secret, str):
            return _error(400, "INVALID_REQUEST", "api_key and api_secret are required")
        # Both compared in full, in constant time, like a real credential check.
        key_ok = hmac.compare_digest(
            api_key.encode("utf-8", "surrogatepass"),
            self._credentials.api_key.encode("utf-8", "surrogatepass"),
        )
        secret_ok = hmac.compare_digest(
            api_secret.encode("utf-8", "surrogatepass"),
            self._credentials.api_secret.encode("utf-8", "surrogatepass"),
        )
        if not (key_ok and secret_ok):
            self.stats.invalid_credentials += 1
            return _INVALID_CREDENTIALS
        self.stats.token_successes += 1
        return self._issue(_Family(next(self._family_ids)))

    @_endpoint(
        "refresh",
        "POST",
        "/auth/refresh",
        counter="refresh_calls",
        token_endpoint=True,
        bearer=False,
    )
    async def _handle_refresh(self, request: web.Request) -> _Reply:
        """``POST /auth/refresh``: a single-use refresh token for a new pair (no bearer)."""
        body = await _json_object(request)
        if body is None:
            return _BAD_JSON
        presented = _required_str(body, "refresh_token")
        if presented is None:
            return _error(400, "INVALID_REQUEST", "refresh_token is required")
        stats = self.stats
        token = self._refresh.get(presented)
        if token is None:
            stats.invalid_refresh += 1
            return _INVALID_REFRESH
        family = token.family
        if token.spent:
            stats.refresh_reuse += 1
            stats.invalid_refresh += 1
            if self.reuse_detection and not family.revoked:
                family.revoked = True
                stats.families_revoked += 1
            return _INVALID_REFRESH
        if token.revoked or family.revoked or self.clock.monotonic() >= token.expires_at:
            stats.invalid_refresh += 1
            return _INVALID_REFRESH
        token.spent = True
        if self.revoke_access_on_refresh and family.current_access is not None:
            self._access[family.current_access].revoked = True
        stats.refresh_successes += 1
        return self._issue(family)

    @_endpoint("revoke", "POST", "/auth/revoke", counter="revoke_calls")
    async def _handle_revoke(self, request: web.Request) -> _Reply:
        """``POST /auth/revoke``: revoke ``token``/``access_token`` of the body, else the bearer.

        A ``refresh_token`` in the body is revoked too. Unknown or already revoked tokens
        answer 200 as well (idempotent), but the bearer must be one this server issued and not
        expired.
        """
        bearer, failure = self._bearer(request)
        if failure is not None:
            return failure
        assert bearer is not None
        record = self._access[bearer]
        if not (record.revoked or record.family.revoked) and (
            self.clock.monotonic() >= record.expires_at
        ):
            return _EXPIRED_TOKEN
        body = await _json_object(request, optional=True)
        if body is None:
            return _BAD_JSON
        for field in ("token", "access_token", "refresh_token"):
            if field in body and not (isinstance(body[field], str) and body[field]):
                return _error(400, "INVALID_REQUEST", f"{field} must be a non-empty string")
        self.revoke_access_token(_required_str(body, "token", "access_token") or bearer)
        refresh_token = _required_str(body, "refresh_token")
        if refresh_token is not None and refresh_token in self._refresh:
            self._refresh[refresh_token].revoked = True
        return _ok({"revoked": True})

    @_endpoint("me", "GET", "/auth/me", counter="me_calls")
    async def _handle_me(self, request: web.Request) -> _Reply:
        """``GET /auth/me``: the user, tenant and permissions of the bearer."""
        bearer, failure = self._bearer(request)  # _authenticate, inlined: the benchmarks' path
        if failure is not None:
            return failure
        assert bearer is not None
        return self._access_error(self._access[bearer]) or self._me_reply
