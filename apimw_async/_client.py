"""The client: authenticated API requests with a one-time replay after a refused token."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import aiohttp
from multidict import CIMultiDictProxy

from ._clock import Clock
from ._config import (
    DEFAULT_BASE_URL,
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_REQUEST_TIMEOUT,
    ENV_BASE_URL,
)
from ._errors import AccessTokenError, ConfigurationError
from ._http import ApiResponse, RateLimitInfo, SessionProvider, normalize_base_url, send
from ._models import Credentials
from ._token_manager import TokenManager
from ._version import __version__
from .resources.auth import AuthResource

__all__ = ["Client"]


class Client:
    """The APIMW API client.

    >>> async with Client(Credentials.from_env()) as client:      # doctest: +SKIP
    ...     me = await client.auth.me()

    Give ``credentials`` (a :class:`TokenManager` is made for them) or a ``token_manager`` to
    share one between clients. A ``session`` you pass is used and never closed; without one
    the client owns one per event loop. Every request carries the bearer token; a 401 with
    ``EXPIRED_TOKEN``, ``INVALID_TOKEN`` or ``REVOKED_TOKEN`` drops that token and replays
    the request once with a fresh one. Extra keyword arguments go to the
    :class:`TokenManager` the client makes (``deadline``, ``refresh_policy``, ``on_token``...).
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
        **token_options: Any,
    ) -> None:
        if token_manager is None:
            if credentials is None:
                raise ConfigurationError(
                    "Client needs credentials or a token_manager (or use Client.from_env())"
                )
            token_manager = TokenManager(
                credentials,
                base_url=base_url,
                session=session,
                allow_insecure_http=allow_insecure_http,
                clock=clock,
                **token_options,
            )
            self._owns_tokens = True
        else:
            if credentials is not None or token_options or clock is not None:
                raise ConfigurationError(
                    "pass either a token_manager or credentials and token options, not both"
                )
            self._owns_tokens = False
        if timeout <= 0:
            raise ConfigurationError("timeout must be positive")
        self._tokens = token_manager
        self._base_url = normalize_base_url(
            base_url or token_manager.base_url or os.environ.get(ENV_BASE_URL) or DEFAULT_BASE_URL,
            allow_insecure_http=allow_insecure_http,
        )
        self._sessions = SessionProvider(
            session,
            timeout=aiohttp.ClientTimeout(total=timeout, connect=DEFAULT_CONNECT_TIMEOUT),
            connector_limit=connector_limit,
        )
        self._headers = {"Accept": "application/json", "User-Agent": f"apimw-async/{__version__}"}
        self._rate_limit: RateLimitInfo | None = None
        self.auth = AuthResource(self)

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
        """The ``X-RateLimit-*`` headers of the latest response that carried them."""
        return self._rate_limit

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
    ) -> ApiResponse:
        """Send an authenticated request to ``{base_url}{path}`` and parse the envelope.

        The low-level call under every resource method, usable for endpoints this SDK does not
        wrap yet. Returns the parsed :class:`ApiResponse`; raises the typed errors of
        :mod:`apimw_async`.
        """
        session = self._sessions.get()
        url = self._base_url + (path if path.startswith("/") else "/" + path)
        token = await self._tokens.get_token()
        try:
            return await self._send(
                session, method, url, token.authorization, json, params, token.access_token
            )
        except AccessTokenError:
            # The server refused this token; drop it (only if still current) and replay once.
            await self._tokens.invalidate(token)
            token = await self._tokens.get_token()
            return await self._send(
                session, method, url, token.authorization, json, params, token.access_token
            )

    async def _send(
        self,
        session: aiohttp.ClientSession,
        method: str,
        url: str,
        authorization: str,
        json: Any,
        params: Mapping[str, str] | None,
        access_token: str,
    ) -> ApiResponse:
        return await send(
            session,
            method,
            url,
            headers={**self._headers, "Authorization": authorization},
            json_body=json,
            params=params,
            bearer=True,
            redact=(access_token,),
            on_headers=self._observe_headers,
        )

    def _observe_headers(self, headers: CIMultiDictProxy[str]) -> None:
        if "X-RateLimit-Remaining" in headers or "X-RateLimit-Limit" in headers:
            self._rate_limit = RateLimitInfo.from_headers(headers)

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
