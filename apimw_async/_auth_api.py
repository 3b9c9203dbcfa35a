"""The auth endpoints: ``POST auth/token``, ``auth/refresh``, ``auth/revoke``.

Each call is one HTTP request (no retries: the token manager decides those) that returns a
:class:`TokenGrant` or raises a typed error. On a session shared with the application, a call
takes the reserved lane of the session's admission queue, so it never waits behind
application requests. Token-endpoint calls carry no ``Authorization``
header and bypass session middlewares, so a user's session with our bearer middleware cannot
recurse into itself; error messages have the secrets of the call scrubbed out.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import aiohttp
import attrs

from ._admission import share_with_token_calls, token_lane
from ._clock import Clock
from ._config import DEFAULT_ACCESS_TOKEN_LIFETIME, LOGGER_NAME
from ._envelope import ApiResponse
from ._errors import (
    AccessTokenError,
    ConfigurationError,
    MalformedResponseError,
)
from ._models import Credentials, header_safe
from ._send import send
from ._sessions import SessionProvider
from ._version import __version__

__all__ = ["AuthAPI", "TokenGrant"]

log = logging.getLogger(f"{LOGGER_NAME}.auth")

USER_AGENT = f"apimw-async/{__version__}"


@attrs.frozen(repr=False)
class TokenGrant:
    """One successful answer of ``auth/token`` or ``auth/refresh``.

    ``sent_at`` (monotonic) and ``sent_at_wall`` (epoch) are taken just before the request
    was sent, so the token's lifetime is counted from then.
    """

    access_token: str
    token_type: str
    expires_in: float
    refresh_token: str | None
    sent_at: float
    sent_at_wall: float

    @classmethod
    def from_data(cls, data: Any, *, sent_at: float, sent_at_wall: float) -> TokenGrant:
        """Validate the envelope's ``data``; :class:`MalformedResponseError` if it does not fit."""
        if not isinstance(data, Mapping):
            raise MalformedResponseError("token response: 'data' is not an object")
        access = data.get("access_token")
        if not isinstance(access, str) or not access.strip():
            raise MalformedResponseError("token response: 'access_token' is missing or empty")
        if not header_safe(access.strip()):
            # CR/LF, spaces or non-ASCII: no request could carry it in a header.
            raise MalformedResponseError(
                "token response: 'access_token' has characters a header cannot carry"
            )
        token_type = data.get("token_type", "Bearer")
        if token_type is None:
            token_type = "Bearer"
        if not isinstance(token_type, str) or not header_safe(token_type.strip()):
            raise MalformedResponseError("token response: 'token_type' is not a word")
        expires_in = _lifetime(data.get("expires_in"))
        refresh = data.get("refresh_token")
        if refresh is not None and (not isinstance(refresh, str) or not refresh.strip()):
            raise MalformedResponseError("token response: 'refresh_token' is not a string")
        return cls(
            access_token=access.strip(),
            token_type=token_type.strip(),
            expires_in=expires_in,
            refresh_token=refresh.strip() if refresh else None,
            sent_at=sent_at,
            sent_at_wall=sent_at_wall,
        )

    def __repr__(self) -> str:
        return f"TokenGrant(token_type={self.token_type!r}, expires_in={self.expires_in!r})"


def _lifetime(value: Any) -> float:
    if value is None:
        # The docs call 3600 the default; a server that omits the field means that.
        return DEFAULT_ACCESS_TOKEN_LIFETIME
    if isinstance(value, bool):
        raise MalformedResponseError("token response: 'expires_in' is not a number")
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise MalformedResponseError("token response: 'expires_in' is not a number") from None
    if not isinstance(value, (int, float)):
        raise MalformedResponseError("token response: 'expires_in' is not a number")
    try:
        seconds = float(value)
    except OverflowError:
        raise MalformedResponseError("token response: 'expires_in' is out of range") from None
    if not seconds > 0 or seconds == float("inf"):
        raise MalformedResponseError("token response: 'expires_in' is not a positive lifetime")
    return seconds


class AuthAPI:
    """Calls of the ``/auth`` endpoints against ``base_url`` (already validated)."""

    def __init__(self, base_url: str, sessions: SessionProvider, clock: Clock) -> None:
        self._base_url = base_url
        self._sessions = sessions
        self._clock = clock
        self._headers = {"Accept": "application/json", "User-Agent": USER_AGENT}

    def check_session(self, session: aiohttp.ClientSession) -> None:
        """Take a user session for the token calls: refuse one whose default headers would
        put a bearer on them, and reserve them a lane in its admission queue."""
        if "Authorization" in session.headers:
            raise ConfigurationError(
                "the aiohttp session has a default Authorization header; token-endpoint calls "
                "must not carry one: pass a session without it"
            )
        share_with_token_calls(session)

    async def request_token(self, credentials: Credentials, *, timeout: float) -> TokenGrant:
        """``POST auth/token`` with the API key and secret."""
        body = {"api_key": credentials.api_key, "api_secret": credentials.api_secret}
        return await self._grant("token", body, timeout, (credentials.api_secret,))

    async def refresh(self, refresh_token: str, *, timeout: float) -> TokenGrant:
        """``POST auth/refresh`` with a (single-use) refresh token."""
        return await self._grant(
            "refresh", {"refresh_token": refresh_token}, timeout, (refresh_token,)
        )

    async def revoke(
        self, token_header: str, access_token: str, *, field: str, timeout: float
    ) -> bool:
        """``POST auth/revoke`` for ``access_token``; ``True`` if the server revoked it now.

        The revoke page of the docs is missing, so this is tolerant: any 2xx (with or without a
        body) is success, and a token the server already rejects (revoked, invalid, expired)
        counts as revoked (``False``).
        """
        try:
            await self._post(
                "revoke",
                {field: access_token},
                timeout,
                (access_token,),
                authorization=token_header,
            )
        except AccessTokenError as exc:
            log.debug("revoke: token already unusable (%s)", exc.code or exc.status)
            return False
        return True

    async def _grant(
        self, endpoint: str, body: dict[str, str], timeout: float, secrets: tuple[str, ...]
    ) -> TokenGrant:
        sent_at = self._clock.monotonic()
        sent_at_wall = self._clock.time()
        response = await self._post(endpoint, body, timeout, secrets)
        return TokenGrant.from_data(response.data, sent_at=sent_at, sent_at_wall=sent_at_wall)

    async def _post(
        self,
        endpoint: str,
        body: dict[str, str],
        timeout: float,
        secrets: tuple[str, ...],
        *,
        authorization: str | None = None,
    ) -> ApiResponse:
        session = self._sessions.get()
        headers = self._headers
        if authorization is not None:
            headers = {**headers, "Authorization": authorization}
        # On the manager's own session no application request queues in the pool; on a
        # shared one the call takes the reserved lane of the session's admission queue.
        gate = None if self._sessions.owns_session else token_lane(session)
        if gate is not None:
            await gate.acquire(priority=True)
        try:
            return await send(
                session,
                "POST",
                f"{self._base_url}/auth/{endpoint}",
                headers=headers,
                json_body=body,
                timeout=aiohttp.ClientTimeout(total=timeout),
                bearer=authorization is not None,
                bypass_middlewares=True,
                redact=secrets,
            )
        finally:
            if gate is not None:
                gate.release()
