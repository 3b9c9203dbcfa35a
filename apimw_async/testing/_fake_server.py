"""A real, in-process APIMW server for tests, demos and benchmarks.

:class:`FakeAPIMW` runs an :mod:`aiohttp.web` server on ``127.0.0.1`` (a free port by default)
that implements every endpoint of the public docs with their envelopes and error codes:

* auth (:mod:`._fake_auth`): ``POST /v1/auth/token``, ``/refresh``, ``/revoke`` and
  ``GET /v1/auth/me``;
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
* :class:`FaultPlan` (``fake.faults``, :mod:`._fake_faults`): one-shot or probabilistic errors,
  dropped connections, malformed bodies and delays, optionally *after* the server has committed
  the operation;
* :class:`FakeStats` (``fake.stats``): counters, and :meth:`FakeAPIMW.wait_until` /
  :meth:`FakeAPIMW.wait_for_deliveries` to wait for them without polling.

Where the public docs are silent (see the Gaps in docs/apimw-api.md) the behaviour chosen here is
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
import itertools
import math
import secrets
from collections.abc import Awaitable, Callable, Iterable, Mapping
from types import MappingProxyType
from typing import Any, Final

from aiohttp import web

from .._clock import SYSTEM_CLOCK, Clock
from ._fake_auth import _AuthMixin
from ._fake_base import (
    _API_PREFIX,
    _ROUTES,
    FakeStats,
    _error,
    _ok,
    _Reply,
    _Route,
)
from ._fake_faults import FAULT_KINDS, FaultPlan, _fault_reply
from ._fake_webhooks import DEFAULT_RETRY_SCHEDULE, _WebhooksMixin
from ._fake_whatsapp import _WhatsAppMixin

__all__ = ["FAULT_KINDS", "PLAN_RATE_LIMITS", "FakeAPIMW", "FakeStats", "FaultPlan"]

#: Requests per minute of each plan (rate-limits page); ``enterprise`` uses ``rate_limit``.
PLAN_RATE_LIMITS: Final[Mapping[str, int | None]] = MappingProxyType(
    {"free": 10, "starter": 60, "professional": 300, "enterprise": None}
)
_WINDOW: Final = 60


class FakeAPIMW(_AuthMixin, _WhatsAppMixin, _WebhooksMixin):
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
        self.host = host
        self._requested_port = port
        self.token_latency = token_latency
        """Extra real-time delay of ``/auth/token`` and ``/auth/refresh``."""
        self.api_latency = api_latency
        """Extra real-time delay of every other endpoint."""
        self.rate_limit = rate_limit
        """Requests per minute of the ``enterprise`` plan, and the ``X-RateLimit-Limit``
        reported while the limit is not enforced."""
        self._enforce_rate_limit = enforce_rate_limit
        self.retry_after_header = retry_after_header
        """Also send a standard ``Retry-After`` header with an enforced 429."""
        self.clock: Clock = SYSTEM_CLOCK if clock is None else clock
        self.stats = FakeStats()
        self.faults = FaultPlan((route.name for route in _ROUTES), seed=seed)

        self._init_auth(
            api_key=api_key,
            api_secret=api_secret,
            token_lifetime=token_lifetime,
            refresh_token_lifetime=refresh_token_lifetime,
            reuse_detection=reuse_detection,
            revoke_access_on_refresh=revoke_access_on_refresh,
            revoke_refresh_with_access=revoke_refresh_with_access,
        )
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

    # --- test helpers ------------------------------------------------------------------------

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
