"""``apimw_async`` itself: the :class:`~apimw_async.Client`, and the middleware on a plain session.

Both are used exactly as the README shows, with default policies. ``request()`` of the Client
row goes through ``Client.request("GET", "/auth/me")`` (envelope parsed, typed errors, one
replay after a token 401); the middleware row is a plain ``aiohttp.ClientSession`` with
``BearerAuthMiddleware`` whose application code reads and parses the JSON itself, like the
aiohttp baselines. When the workload asks for instrumentation, ``get_token`` of the manager is
wrapped by the probe (an instance attribute, so both rows go through it); token-call counts come
from the manager's own :class:`~apimw_async.TokenStats`.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from yarl import URL

from apimw_async import (
    AccessTokenError,
    BearerAuthMiddleware,
    Client,
    Token,
    TokenManager,
)

from .base import Env, Probe, Strategy

__all__ = [
    "ClientMeStrategy",
    "ClientStrategy",
    "MiddlewareFairStrategy",
    "MiddlewareStrategy",
    "SharedSessionStrategy",
]


class _ManagerProbe(Probe):
    """The probe, fed from a :class:`TokenManager`'s counters and cached token."""

    def __init__(self) -> None:
        super().__init__()
        self.manager: TokenManager | None = None

    def activity(self) -> tuple[int, int]:
        assert self.manager is not None
        stats = self.manager.stats
        return (
            stats.token_calls + stats.refresh_calls,
            stats.tokens_obtained + stats.failures,
        )

    def valid(self, now: float) -> bool:
        assert self.manager is not None
        token = self.manager.token
        return token is not None and now < token.obtained_at + token.expires_in


def _instrument(manager: TokenManager, probe: _ManagerProbe) -> None:
    probe.manager = manager
    get_token = manager.get_token

    async def measured() -> Token:
        return await probe.measure(get_token)

    manager.get_token = measured  # type: ignore[method-assign]


class _Ours(Strategy):
    def __init__(self, env: Env) -> None:
        super().__init__(env)
        self.probe: _ManagerProbe = _ManagerProbe()
        self._waits_at_start = 0

    @property
    def manager(self) -> TokenManager:
        raise NotImplementedError

    def counters(self) -> dict[str, Any]:
        stats = self.manager.stats.as_dict()
        return {
            "stats_waits": stats["waits"],
            "stats_waits_valid": stats["waits_with_valid_token"],
            "stats_waits_first": stats["waits_without_valid_token"],
            "background_refreshes": stats["background_refreshes"],
            "fallbacks": stats["fallbacks"],
        }


class ClientStrategy(_Ours):
    name = "apimw_async Client"

    async def start(self) -> None:
        env = self.env
        self._client = Client(
            env.credentials,
            base_url=env.base_url,
            connector_limit=env.connections,
            timeout=env.timeout,
        )
        if env.instrument:
            _instrument(self._client.tokens, self.probe)
        else:
            self.probe.manager = self._client.tokens

    @property
    def manager(self) -> TokenManager:
        return self._client.tokens

    async def request(self) -> int:
        try:
            response = await self._client.request("GET", "/auth/me")
        except AccessTokenError:
            # A 401 that survived the one replay: the application sees it.
            return 401
        return response.status

    def token_path(self) -> Callable[[], Awaitable[Any]]:
        manager = self._client.tokens

        async def path() -> str:
            return (await manager.get_token()).authorization

        return path

    async def close(self) -> None:
        await self._client.aclose()


class ClientMeStrategy(ClientStrategy):
    """The Client through its typed resource: ``await client.auth.me()`` (a CurrentUser)."""

    name = "apimw_async Client me()"

    async def request(self) -> int:
        try:
            await self._client.auth.me()
        except AccessTokenError:
            return 401
        return 200


class MiddlewareStrategy(_Ours):
    name = "apimw_async middleware"
    #: ``BearerAuthMiddleware(fair_admission=...)``: off by default, as for users.
    fair = False

    async def start(self) -> None:
        env = self.env
        self._tokens = TokenManager(env.credentials, base_url=env.base_url)
        if env.instrument:
            _instrument(self._tokens, self.probe)
        else:
            self.probe.manager = self._tokens
        self._middleware = BearerAuthMiddleware(self._tokens, fair_admission=self.fair)
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=env.connections),
            timeout=aiohttp.ClientTimeout(total=env.timeout),
            middlewares=(self._middleware,),
        )

    @property
    def manager(self) -> TokenManager:
        return self._tokens

    async def request(self) -> int:
        async with self._session.get(self.env.me_url) as resp:
            json.loads(await resp.read())
            return resp.status

    def token_path(self) -> Callable[[], Awaitable[Any]]:
        """The middleware's own work around ``handler``: scope check, token, header."""
        middleware = self._middleware
        request = _StubRequest(self.env.me_url)

        async def handler(_: Any) -> Any:
            return _STUB_RESPONSE

        async def path() -> Any:
            return await middleware(request, handler)  # type: ignore[arg-type]

        return path

    async def close(self) -> None:
        await self._session.close()
        await self._tokens.aclose()


class _StubResponse:
    status = 200


_STUB_RESPONSE = _StubResponse()


class _StubSession:
    pass


class _StubRequest:
    """Just what the middleware reads of a ``ClientRequest`` (url, headers, method, session)."""

    method = "GET"

    def __init__(self, url: str) -> None:
        self.url = URL(url)
        self.headers: dict[str, str] = {}
        # Not a session any token manager shares: the middleware's admission stays off, as on
        # the user's own session of the middleware row.
        self.session = _StubSession()


class MiddlewareFairStrategy(MiddlewareStrategy):
    """The middleware with its fair admission switched on (``fair_admission=True``)."""

    name = "apimw_async middleware+fifo"
    fair = True


class SharedSessionStrategy(MiddlewareStrategy):
    """The manager on the application's own session: its token calls share the pool.

    One ``aiohttp.ClientSession`` (the pool of ``connections``) carries the application's
    requests, through ``BearerAuthMiddleware(fair_admission=True)``, and the manager's token
    and refresh calls (``TokenManager(session=...)``).
    """

    name = "apimw_async shared session"

    async def start(self) -> None:
        env = self.env
        middleware: list[BearerAuthMiddleware] = []

        async def late(request: aiohttp.ClientRequest, handler: Any) -> aiohttp.ClientResponse:
            # The session must exist before the manager that shares it, and the middleware
            # needs the manager: bind it on first use.
            return await middleware[0](request, handler)

        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=env.connections),
            timeout=aiohttp.ClientTimeout(total=env.timeout),
            middlewares=(late,),
        )
        self._tokens = TokenManager(env.credentials, base_url=env.base_url, session=self._session)
        if env.instrument:
            _instrument(self._tokens, self.probe)
        else:
            self.probe.manager = self._tokens
        self._middleware = BearerAuthMiddleware(self._tokens, fair_admission=True)
        middleware.append(self._middleware)
