"""The auth endpoints of the fake server: token, refresh, revoke, me, and the token state.

A mixin of :class:`~._fake_server.FakeAPIMW`; see its docstring for the options and for the
choices where the docs are silent (``/auth/revoke`` needs a bearer and is idempotent; a missing
or garbled bearer is ``401 INVALID_TOKEN``). Tokens belong to *families*: one per
``/auth/token`` call, continued by each refresh, so reuse detection can revoke a whole family.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import secrets
from typing import Final

import attrs
from aiohttp import web

from .._models import Credentials
from ._fake_base import (
    _BAD_JSON,
    _b64url,
    _compact_json,
    _endpoint,
    _error,
    _FakeCore,
    _json_object,
    _ok,
    _Reply,
    _required_str,
)


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


# --- token state ----------------------------------------------------------------------------


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


class _AuthMixin(_FakeCore):
    """Credentials, token families, the four auth endpoints and the auth test helpers."""

    token_lifetime: float
    refresh_token_lifetime: float
    reuse_detection: bool
    revoke_access_on_refresh: bool
    revoke_refresh_with_access: bool
    _me_reply: _Reply
    """The ``/auth/me`` answer; built by the hub whenever ``plan`` changes."""

    def _init_auth(
        self,
        *,
        api_key: str,
        api_secret: str,
        token_lifetime: float,
        refresh_token_lifetime: float,
        reuse_detection: bool,
        revoke_access_on_refresh: bool,
        revoke_refresh_with_access: bool,
    ) -> None:
        self._credentials = Credentials(api_key, api_secret)
        self.token_lifetime = token_lifetime
        """``expires_in`` of tokens issued from now on (seconds)."""
        self.refresh_token_lifetime = refresh_token_lifetime
        self.reuse_detection = reuse_detection
        """A spent refresh token presented again revokes its whole family."""
        self.revoke_access_on_refresh = revoke_access_on_refresh
        """A refresh revokes the family's previous access token."""
        self.revoke_refresh_with_access = revoke_refresh_with_access
        """Revoking an access token also revokes the refresh token issued with it."""
        self._access: dict[str, _AccessToken] = {}
        self._refresh: dict[str, _RefreshToken] = {}
        self._family_ids = itertools.count(1)
        self._signing_key = secrets.token_bytes(32)
        digest = hashlib.sha256(api_key.encode("utf-8", "surrogatepass")).hexdigest()
        self._user_id = f"usr_{digest[:12]}"
        self._tenant_id = f"ten_{digest[12:24]}"

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
