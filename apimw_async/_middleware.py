"""An aiohttp client middleware that authenticates a user-owned session with a TokenManager.

>>> tokens = TokenManager(Credentials.from_env())                      # doctest: +SKIP
>>> async with aiohttp.ClientSession(middlewares=(BearerAuthMiddleware(tokens),)) as s:
...     async with s.get(f"{tokens.base_url}/auth/me") as resp: ...

Token-endpoint calls of the manager bypass session middlewares, so the manager may even share
this very session without recursing into the middleware.
"""

from __future__ import annotations

import logging

from aiohttp import ClientHandlerType, ClientRequest, ClientResponse
from yarl import URL

from ._config import LOGGER_NAME
from ._envelope import loads
from ._token_manager import TokenManager

__all__ = ["BearerAuthMiddleware"]

log = logging.getLogger(f"{LOGGER_NAME}.middleware")

_TOKEN_CODES = frozenset({"EXPIRED_TOKEN", "INVALID_TOKEN", "REVOKED_TOKEN"})


class BearerAuthMiddleware:
    """Adds ``Authorization: Bearer …`` from ``tokens`` and replays once after a token 401.

    Only requests under the manager's ``base_url`` (same scheme, host, port and path prefix)
    get the header, so a session shared with other services never leaks the token to them;
    pass ``scope=None`` to authenticate every request, or another URL prefix. A 401 whose
    error code is ``EXPIRED_TOKEN``, ``INVALID_TOKEN``, ``REVOKED_TOKEN`` or absent drops the
    token (only if it is still the current one) and the request is sent once more.
    """

    def __init__(
        self,
        tokens: TokenManager,
        *,
        scope: str | bool | None = True,
        replay_on_401: bool = True,
    ) -> None:
        self._tokens = tokens
        if scope is True:
            scope = tokens.base_url
        self._scope: URL | None = None if scope in (None, False) else URL(str(scope))
        # Computed once: the scope is checked on every request.
        self._origin = None if self._scope is None else self._scope.origin()
        self._prefix = "" if self._scope is None else self._scope.path.rstrip("/")
        self._prefix_slash = self._prefix + "/"
        self._replay = replay_on_401

    @property
    def tokens(self) -> TokenManager:
        """The token manager the header comes from."""
        return self._tokens

    def _in_scope(self, url: URL) -> bool:
        if self._scope is None:
            return True
        if url.origin() != self._origin:
            return False
        path = url.path
        return path == self._prefix or path.startswith(self._prefix_slash)

    async def __call__(self, request: ClientRequest, handler: ClientHandlerType) -> ClientResponse:
        if not self._in_scope(request.url):
            return await handler(request)
        token = await self._tokens.get_token()
        request.headers["Authorization"] = token.authorization
        response = await handler(request)
        if response.status != 401 or not self._replay:
            return response
        if not _is_token_refusal(await response.read()):
            return response
        response.release()
        await self._tokens.invalidate(token)
        token = await self._tokens.get_token()
        request.headers["Authorization"] = token.authorization
        log.debug("replaying %s %s after a token 401", request.method, request.url.path)
        return await handler(request)


def _is_token_refusal(body: bytes) -> bool:
    try:
        payload = loads(body) if body else None
    except (ValueError, UnicodeDecodeError):
        return True
    error = payload.get("error") if isinstance(payload, dict) else None
    code = error.get("code") if isinstance(error, dict) else None
    # No code at all: a gateway's bare 401; a fresh token is the best guess.
    return not isinstance(code, str) or code in _TOKEN_CODES
