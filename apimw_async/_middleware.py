"""An aiohttp client middleware that authenticates a user-owned session with a TokenManager.

>>> tokens = TokenManager(Credentials.from_env())                      # doctest: +SKIP
>>> async with aiohttp.ClientSession(middlewares=(BearerAuthMiddleware(tokens),)) as s:
...     async with s.get(f"{tokens.base_url}/auth/me") as resp: ...

Token-endpoint calls of the manager bypass session middlewares, so the manager may even share
this very session without recursing into the middleware.
"""

from __future__ import annotations

import logging

from aiohttp import ClientHandlerType, ClientRequest, ClientResponse, ClientSession
from yarl import URL

from ._admission import Admission, check_limit, check_timeout, gate_for, shares_token_calls
from ._config import LOGGER_NAME
from ._envelope import parse_response
from ._errors import AccessTokenError, APIMWError, ConfigurationError
from ._token_manager import TokenManager

__all__ = ["BearerAuthMiddleware"]

log = logging.getLogger(f"{LOGGER_NAME}.middleware")


class BearerAuthMiddleware:
    """Adds ``Authorization: Bearer …`` from ``tokens`` and replays once after a token 401.

    Only requests under the manager's ``base_url`` (same scheme, host, port and path prefix)
    get the header, so a session shared with other services never leaks the token to them;
    pass ``scope=None`` to authenticate every request, or another URL prefix. A 401 that
    refuses the token (``EXPIRED_TOKEN``, ``INVALID_TOKEN``, ``REVOKED_TOKEN``, no code, or an
    unknown one: the same rule as the :class:`Client`'s) drops the token (only if it is still
    the current one) and the request is sent once more.

    Fair admission admits the session's requests to its connection pool in arrival order, as
    the :class:`Client` does: at most ``max_connections`` in flight (default: the connector's
    limit), each holding its slot until its response gives the connection back;
    ``admission_timeout`` bounds the wait (:class:`PoolTimeoutError`). Every request through
    this middleware is queued, in scope or not, since all share the pool. It is opt-in
    (``fair_admission=True``, or giving ``max_connections``/``admission_timeout``), except on
    a session the token manager shares: there it is on unless ``fair_admission=False``,
    because the manager's refresh takes a reserved lane of that queue instead of waiting
    behind your requests in aiohttp's pool.
    """

    def __init__(
        self,
        tokens: TokenManager,
        *,
        scope: str | bool | None = True,
        replay_on_401: bool = True,
        fair_admission: bool | None = None,
        max_connections: int | None = None,
        admission_timeout: float | None = None,
    ) -> None:
        self._tokens = tokens
        self._max_connections = check_limit(max_connections)
        self._admission_timeout = check_timeout(admission_timeout)
        tuned = max_connections is not None or admission_timeout is not None
        if fair_admission is False and tuned:
            raise ConfigurationError(
                "max_connections and admission_timeout need fair admission (not "
                "fair_admission=False)"
            )
        # None: on where the manager shares the session (its refresh needs the lane), or
        # when tuned; off elsewhere.
        self._fair: bool | None = True if tuned and fair_admission is None else fair_admission
        self._last_gate: tuple[ClientSession, Admission | None] | None = None
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
        if self._fair is False:
            return await self._authenticated(request, handler)
        session = request.session
        last = self._last_gate
        gate = last[1] if last is not None and last[0] is session else self._gate(session)
        if gate is None:
            return await self._authenticated(request, handler)
        if not gate.try_acquire():
            await gate.acquire(timeout=self._admission_timeout)
        try:
            response = await self._authenticated(request, handler)
        except BaseException:
            gate.release()
            raise
        # The slot is the connection's: hand it on when the response gives the connection
        # back to the pool (read to the end, released or closed), not when this returns.
        connection = response.connection
        if connection is None:
            gate.release()
        else:
            connection.add_callback(gate.release)
        return response

    def _gate(self, session: ClientSession) -> Admission | None:
        # Decided on a session's first request (a middleware usually serves one session).
        gate = None
        if self._fair or shares_token_calls(session):
            # (None for an unlimited connector without max_connections: nothing to queue for)
            gate = gate_for(session, self._max_connections, clock=self._tokens.clock)
        self._last_gate = (session, gate)
        return gate

    async def _authenticated(
        self, request: ClientRequest, handler: ClientHandlerType
    ) -> ClientResponse:
        if not self._in_scope(request.url):
            return await handler(request)
        token = await self._tokens.get_token()
        request.headers["Authorization"] = token.authorization
        response = await handler(request)
        if response.status != 401 or not self._replay:
            return response
        if not _refused(response, await response.read()):
            return response
        response.release()
        await self._tokens.invalidate(token)
        token = await self._tokens.get_token()
        request.headers["Authorization"] = token.authorization
        log.debug("replaying %s %s after a token 401", request.method, request.url.path)
        return await handler(request)


def _refused(response: ClientResponse, body: bytes) -> bool:
    # The one envelope parser and the one rule (is_token_refusal) decide, as for the Client.
    try:
        parse_response(response.status, response.headers, body, bearer=True)
    except AccessTokenError:
        return True
    except APIMWError:
        return False
    return False
